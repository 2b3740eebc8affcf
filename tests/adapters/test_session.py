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


def test_constrained_decoding_auto_is_on_for_the_base_model_only(tiny_model_dir):
    """``eval.constrained: auto`` (the default) constrains zero-shot decoding, where it measured a win, and leaves a
    trained adapter (any LoRA B non-zero) and HTML answers unconstrained; true/false force it."""
    import pytest

    from fedmedlora.config import ConfigError, load_config
    from fedmedlora.lm.session import Session

    base = [f"model.name={tiny_model_dir}", "model.device=cpu", "lora.r=4", "data.format=json"]
    cfg = load_config(None, base)
    assert cfg.eval.constrained == "auto"
    session = Session.load(cfg)
    session.set_arrays(None)
    assert session.adapter_is_identity() and session.uses_constraint(cfg)
    html = load_config(None, [*base, "data.format=html"])
    assert not session.uses_constraint(html)
    assert not session.uses_constraint(load_config(None, [*base, "eval.constrained=false"]))

    trained = {k: v.copy() for k, v in session.init_arrays.items()}
    key = next(k for k in trained if "lora_B" in k)
    trained[key][0, 0] = 1e-3  # one trained weight is enough to make it an adapter
    session.set_arrays(trained)
    assert not session.adapter_is_identity() and not session.uses_constraint(cfg)
    assert session.uses_constraint(load_config(None, [*base, "eval.constrained=true"]))
    session.set_arrays(None)
    assert session.uses_constraint(cfg)

    with pytest.raises(ConfigError, match="constrained"):
        load_config(None, [*base, "data.format=html", "eval.constrained=true"])
    with pytest.raises(ConfigError, match="constrained"):
        load_config(None, [*base, "eval.constrained=sometimes"])
