"""lm.session.Session: merged-adapter generation equals unmerged generation and restores base weights exactly."""

import numpy as np
import torch


def test_merged_generation_is_exact_and_restores_base_weights(tiny_model_dir):
    from fedmedlora.config import load_config
    from fedmedlora.lm.session import Session

    cfg = load_config(None, [f"model.name={tiny_model_dir}", "model.device=cpu", "lora.r=4", "eval.max_new_tokens=12"])
    session = Session.load(cfg)
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(0, 0.5, v.shape).astype(np.float32) for k, v in session.init_arrays.items()}
    session.set_arrays(arrays)  # a non-trivial adapter (B != 0)
    before = {n: p.detach().clone() for n, p in session.model.named_parameters()}
    prompts = ["The patient denies chest pain.", "Aspirin 81 mg daily was continued."]

    merged = session.generate_fn(cfg)(prompts)
    plain_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"merge_adapter": False})})
    unmerged = session.generate_fn(plain_cfg)(prompts)

    assert merged == unmerged
    for name, p in session.model.named_parameters():
        assert torch.equal(p, before[name]), name  # bit-identical, LoRA and base weights alike
    assert not any(getattr(m, "merged", False) for m in session.model.modules())


def test_evaluation_keeps_every_raw_output_next_to_the_tables(tiny_model_dir, tmp_path):
    """Error analysis needs what the model actually wrote: one JSONL line per prompt, apart from the score tables."""
    import json

    from fedmedlora.config import load_config
    from fedmedlora.recipes.local import run_setting

    cfg = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            "model.device=cpu",
            "lora.r=2",
            "eval.max_sentences=2",
            "eval.max_new_tokens=4",
        ],
    )
    run = run_setting("zero_shot", cfg, tmp_path / "zs", eval_sites=["chia", "phee"])

    tables = run.read_json("eval/test.json")
    lines = [json.loads(x) for x in (tmp_path / "zs" / "eval" / "test_outputs.jsonl").read_text().splitlines()]
    for site in ("chia", "phee"):
        assert "outputs" not in tables[site]
        mine = [x for x in lines if x["site"] == site]
        assert len(mine) == sum(tables[site]["parse"]["prompts"].values()) > 0
        assert all(isinstance(x["prompt"], str) and isinstance(x["output"], str) for x in mine)
    assert {x["site"] for x in lines} == {"chia", "phee"}
