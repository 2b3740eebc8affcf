"""The whole study on the bundled sample with a tiny random model: every setting runs, every artifact is written.

Numbers from a random model are meaningless; this checks the plumbing: run folders, adapters loadable by PEFT,
evaluation tables, the comparison table with one row per method, and the plots.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedmedlora.intervals import MIN_VERDICT_DOCS
from tinymodel import save_tiny_model, tiny_model_overrides

pytestmark = pytest.mark.slow


def _tiny_study_config(model: Path, *overrides: str):
    """The bundled sample with the tiny random model: 1 step per training, 4 examples per site."""
    from fedmedlora.config import load_config

    return load_config(
        overrides=[
            *tiny_model_overrides(model),
            "train.max_steps=1",
            "train.batch_size=2",
            "data.max_train_examples=4",
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    from fedmedlora.federation.site import clear_caches
    from fedmedlora.recipes.study import run_study

    root = tmp_path_factory.mktemp("study")
    cfg = _tiny_study_config(
        save_tiny_model(root / "model"),
        "name=study-test",
        "train.max_length=768",
        "eval.max_sentences=2",
        "eval.max_new_tokens=8",
        "federation.rounds=2",
        "federation.round_eval_sentences=2",
    )
    enc = {"epochs": 1, "rounds": 1, "local_epochs": 1, "max_train_sentences": 6, "batch_size": 4}
    clear_caches()
    run_study(cfg, root / "out", encoder=True, encoder_settings=enc, seeds=2, progress=lambda *_: None)
    first = (root / "out" / "study.csv").read_text()
    # a second call (the command line, --seeds 2) reuses every finished run of the same configuration, both seeds',
    # and rebuilds the same table
    from typer.testing import CliRunner

    from fedmedlora.cli import app

    cfg.save(root / "study.yaml")
    args = ["study", "--out", str(root / "out"), "--config", str(root / "study.yaml"), "--seeds", "2", "--encoder"]
    args += [f"--encoder-set={k}={v}" for k, v in enc.items()]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    messages = [m for m in r.output.splitlines() if m.startswith("[study]") and "encoder" not in m]
    assert messages and all("reusing" in m for m in messages), messages
    assert any(m.startswith("[study] seed 14: Fed-MedLoRA: reusing") for m in messages), messages
    assert (root / "out" / "study.csv").read_text() == first
    clear_caches()
    return root / "out"


def test_every_setting_has_a_self_describing_run_folder(study_dir: Path) -> None:
    from peft import PeftConfig

    expected = [
        "zero-shot",
        "single-site (chia)",
        "single-site (phee)",
        "single-site (bc5cdr)",
        "centralized",
        "fed-medlora",
        "fed-medlora-plus",
        "Fed-MedLoRA → adapted to maccrobat",
        "maccrobat only (from base)",
    ]
    for name in expected:
        run = study_dir / name
        assert (run / "config.yaml").is_file(), name
        assert (run / "eval" / "test.json").is_file(), name
        assert (run / "eval" / "test.md").is_file(), name
        record = json.loads((run / "run.json").read_text())  # federated rows too: scored after the federation
        assert record["status"] == "done", name
        assert record["eval_seconds"] > 0 and record["peak_rss_mb"] > 0, name
        if name != "zero-shot":
            final = run / "adapters" / "final"
            assert (final / "adapter_model.safetensors").is_file(), name
            assert PeftConfig.from_pretrained(final).peft_type.value == "LORA"
            assert json.loads((final / "fedmedlora.json").read_text())["meta"]["format"] == "html"


def test_federated_runs_log_rounds_weights_and_bytes(study_dir: Path) -> None:
    for name in ("fed-medlora", "fed-medlora-plus"):
        recs = [json.loads(x) for x in (study_dir / name / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in recs] == [0, 1, 2]
        for r in recs[1:]:
            assert sorted(r["sites"]) == ["bc5cdr", "chia", "phee"]
            assert abs(sum(r["weights"].values()) - 1) < 1e-9
            assert all(v > 0 for v in r["bytes_up"].values())
        assert (study_dir / name / "adapters" / "round_2").is_dir()
        assert all(0.0 <= r["val_ner_strict_f1"] <= 1.0 and r["val_sentences"] == 2 for r in recs)
    plus = [json.loads(x) for x in (study_dir / "fed-medlora-plus" / "rounds.jsonl").read_text().splitlines()]
    assert plus[1]["loss_source"] == "server" and set(plus[1]["losses"]) == {"bc5cdr", "chia", "phee"}


def test_comparison_table_and_plots(study_dir: Path) -> None:
    md = (study_dir / "study.md").read_text()
    for row in (
        "zero-shot",
        "single-site (phee)",
        "centralized",
        "Fed-MedLoRA",
        "Fed-MedLoRA+",
        "adapted to",
        "encoder single-site (chia)",
        "encoder centralized",
        "encoder federated-full",
        "encoder federated-lora",
    ):
        assert row in md, row
    rows = list(csv.DictReader((study_dir / "study.csv").open()))
    groups = {r["group"] for r in rows}
    assert {"chia", "phee", "bc5cdr", "in-domain (all)", "new site: maccrobat"} <= groups
    # the adapted and local-only models are only evaluated on the new site
    assert {r["group"] for r in rows if r["model"].startswith("maccrobat only")} == {"new site: maccrobat"}
    for r in rows:
        for col in ("ner_strict_f1", "ner_lenient_f1"):
            assert r[col] == "" or 0.0 <= float(r[col]) <= 1.0
    for kind in ("LLM adapters", "encoder models"):
        assert f"Sites a single-site model did not train on ({kind})" in md, kind
    unseen = json.loads((study_dir / "study.json").read_text())["unseen_sites"]["LLM adapters"]
    assert [r["unseen"] for r in unseen] == [["phee", "bc5cdr"], ["chia", "bc5cdr"], ["chia", "phee"]]
    assert all({"Fed-MedLoRA", "Fed-MedLoRA+", "centralized"} <= set(r["scores"]) for r in unseen)
    for png in ("weights_per_round.png", "bytes_per_round.png", "val_loss_per_round.png", "f1_per_round.png"):
        assert (study_dir / "plots" / png).stat().st_size > 1000, png


def test_the_study_writes_its_report(study_dir: Path) -> None:
    """report.html: every row in the comparison, the curves inline, and every model row in the error browser."""
    html = (study_dir / "report.html").read_text(encoding="utf-8")
    llm_rows = ["zero-shot", "single-site (chia)", "centralized", "Fed-MedLoRA", "Fed-MedLoRA+"]
    llm_rows += ["Fed-MedLoRA → adapted to maccrobat", "maccrobat only (from base)"]
    for row in [*llm_rows, "encoder centralized"]:
        assert f"<tr><td>{row}</td>" in html, row
    for row in [*llm_rows, "encoder centralized", "encoder federated-lora"]:  # encoder rows: saved predictions
        assert f'class="f-model" value="{row}"' in html, row
    assert 'class="sent" data-site="maccrobat"' in html and "<mark class=" in html
    assert html.count('src="data:image/png;base64,') >= 4
    assert "http://" not in html and "https://" not in html


def test_encoder_rows_report_bytes_per_round(study_dir: Path) -> None:
    extras = json.loads((study_dir / "study.json").read_text())["extras"]
    full = extras["encoder federated-full"]["MB per round (all sites, up+down)"]
    lora = extras["encoder federated-lora"]["MB per round (all sites, up+down)"]
    assert 0 < lora < full


def test_an_interrupted_federation_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """The study continues a federation from its last checkpoint instead of starting it again, and ends with the
    adapter an uninterrupted run gives (here: a 1-round run extended to 2 rounds, the interruption case)."""
    import numpy as np

    from fedmedlora.federation.site import clear_caches
    from fedmedlora.lm.adapter_io import load_adapter_arrays
    from fedmedlora.recipes.study import run_study

    model = save_tiny_model(tmp_path / "model")

    def cfg(rounds: int):
        return _tiny_study_config(model, "eval.max_sentences=1", "eval.max_new_tokens=4", f"federation.rounds={rounds}")

    only_fed = ("zero_shot", "single_site", "centralized", "new_site")
    clear_caches()
    quiet = lambda *_: None  # noqa: E731
    run_study(cfg(2), tmp_path / "whole", fed_methods=("fedmedlora",), skip=only_fed, progress=quiet)
    run_study(cfg(1), tmp_path / "resumed", fed_methods=("fedmedlora",), skip=only_fed, progress=quiet)
    messages: list[str] = []
    run_study(cfg(2), tmp_path / "resumed", fed_methods=("fedmedlora",), skip=only_fed, progress=messages.append)
    clear_caches()

    assert any("resuming the interrupted run" in m and "after round 1" in m for m in messages), messages
    run = tmp_path / "resumed" / "fed-medlora"
    rounds = [json.loads(x)["round"] for x in (run / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2]
    whole = load_adapter_arrays(tmp_path / "whole" / "fed-medlora" / "adapters" / "final")
    resumed = load_adapter_arrays(run / "adapters" / "final")
    assert whole.keys() == resumed.keys()
    for k in whole:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)


def test_evaluations_keep_documents_and_the_study_compares_rows_on_them(study_dir: Path) -> None:
    for name in ("zero-shot", "single-site (chia)", "fed-medlora", "maccrobat only (from base)"):
        ev = json.loads((study_dir / name / "eval" / "test.json").read_text())
        assert ev["_overall"]["bootstrap"]["resamples"] == 1000, name
        assert all(ev[s]["documents"] for s in ev if s != "_overall"), name
    md = (study_dir / "study.md").read_text()
    intervals = md.split("## Micro F1 (%) with 95% intervals")[1].split("\n## ")[0]
    assert "| Fed-MedLoRA | " in intervals and " [" in intervals.split("| Fed-MedLoRA | ")[1].split("\n")[0]
    assert "| encoder centralized | – | – |" in intervals  # no per-document counts: no interval
    paired = json.loads((study_dir / "study.json").read_text())["paired"]
    by = {(r["a"], r["b"], tuple(r["sites"]), r["task"], r["rule"]): r for r in paired}
    unseen = by[("Fed-MedLoRA", "single-site (chia)", ("phee", "bc5cdr", "maccrobat"), "ner", "strict")]
    assert unseen["low"] <= unseen["difference"] <= unseen["high"]
    if unseen["n_docs"] >= MIN_VERDICT_DOCS:
        assert unseen["verdict"] in ("win", "loss", "not significant")
    else:  # this small study's sample: an interval, but too few documents for a verdict
        assert unseen["verdict"] is None and "too few for a verdict" in unseen["note"]
    assert ("Fed-MedLoRA+", "Fed-MedLoRA", ("chia", "phee", "bc5cdr"), "ner", "strict") in by
    assert ("Fed-MedLoRA+", "centralized", ("maccrobat",), "ner", "strict") in by
    adapted = ("Fed-MedLoRA → adapted to maccrobat", "maccrobat only (from base)", ("maccrobat",), "ner", "strict")
    assert adapted in by
    assert not any(r["a"].startswith("encoder") or r["b"].startswith("encoder") for r in paired)
    assert "## Paired comparisons on the same documents: F1 difference" in md
    assert "| Fed-MedLoRA vs single-site (chia) | phee, bc5cdr, maccrobat | NER strict | " in md
    lines = (study_dir / "study_paired.csv").read_text().splitlines()
    assert lines[0].startswith("comparison,kind,a,b,sites,task,rule,difference,low,high,verdict") and len(lines) > 10
    assert "ner_strict_f1_low" in (study_dir / "study.csv").read_text().splitlines()[0]


def test_a_second_seed_repeats_the_trained_rows_and_gives_mean_and_sd(study_dir: Path) -> None:
    seed_dir = study_dir / "seed-14"
    assert not (seed_dir / "zero-shot").exists() and not (seed_dir / "encoder").exists()
    for name in ("single-site (chia)", "centralized", "fed-medlora", "Fed-MedLoRA → adapted to maccrobat"):
        assert "seed: 14" in (seed_dir / name / "config.yaml").read_text(), name
        # ... but scored on seed 13's test sentences, so the spread over seeds is the spread of training
        first = json.loads((study_dir / name / "eval" / "test.json").read_text())
        again = json.loads((seed_dir / name / "eval" / "test.json").read_text())
        assert {s: sorted(r.get("documents", {})) for s, r in first.items() if not s.startswith("_")} == {
            s: sorted(r.get("documents", {})) for s, r in again.items() if not s.startswith("_")
        }
        assert [r["n_sentences"] for s, r in sorted(first.items()) if not s.startswith("_")] == [
            r["n_sentences"] for s, r in sorted(again.items()) if not s.startswith("_")
        ]
    summary = json.loads((study_dir / "study.json").read_text())
    assert summary["seeds"]["seeds"] == [13, 14]
    rows = {(r["model"], r["group"]): r for r in summary["seeds"]["rows"]}
    one = {(r["model"], r["group"]): r for r in summary["rows"]}
    other = {(r["model"], r["group"]): r for r in json.loads((seed_dir / "study.json").read_text())["rows"]}
    fed = rows[("Fed-MedLoRA", "in-domain (all)")]
    a, b = one[("Fed-MedLoRA", "in-domain (all)")], other[("Fed-MedLoRA", "in-domain (all)")]
    assert fed["n_seeds"] == 2 and fed["ner_strict_f1_mean"] == pytest.approx(
        (a["ner_strict_f1"] + b["ner_strict_f1"]) / 2
    )
    assert fed["ner_strict_f1_sd"] == pytest.approx(abs(a["ner_strict_f1"] - b["ner_strict_f1"]) / 2**0.5)
    assert rows[("zero-shot", "chia")]["n_seeds"] == 1 and rows[("zero-shot", "chia")]["ner_strict_f1_sd"] is None
    md = (study_dir / "study.md").read_text()
    table = md.split("## Across 2 seeds: micro F1 (%), mean ± sd")[1].split("\n## ")[0]
    assert " ± " in table.split("| Fed-MedLoRA | ")[1].split("\n")[0]
    assert "ner_strict_f1_mean" in (study_dir / "study.csv").read_text().splitlines()[0]


def test_study_privacy_rows_table_pairs_and_plot(tmp_path: Path) -> None:
    from fedmedlora.federation.site import clear_caches
    from fedmedlora.recipes.study import run_study

    cfg = _tiny_study_config(
        save_tiny_model(tmp_path / "model"),
        "name=study-dp",
        "train.max_length=768",
        "eval.max_sentences=2",
        "eval.max_new_tokens=8",
        "eval.bootstrap_resamples=50",
        "federation.rounds=2",
    )
    privacy = {
        "Fed-MedLoRA + DP-SGD": ("fedmedlora", ["train.dp.noise_multiplier=1.0", "train.dp.unit=sentence"]),
        "Fed-MedLoRA + client DP": ("fedmedlora", ["federation.dp.noise_multiplier=2.0"]),
    }
    clear_caches()
    run_study(
        cfg,
        tmp_path / "out",
        fed_methods=["fedmedlora"],
        skip=["zero_shot", "single_site", "centralized", "new_site"],
        privacy=privacy,
        progress=lambda *_: None,
    )
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    models = {r["model"] for r in summary["rows"]}
    assert models == {"Fed-MedLoRA", *privacy}
    dp_sgd, client = summary["extras"]["Fed-MedLoRA + DP-SGD"], summary["extras"]["Fed-MedLoRA + client DP"]
    assert dp_sgd["ε record-level (max over sites)"] > 0 and "ε client-level" not in dp_sgd
    assert client["ε client-level"] > 0 and "ε record-level (max over sites)" not in client
    assert "ε client-level" not in summary["extras"]["Fed-MedLoRA"]
    # the private rows' own folders hold their rounds with the ε the table shows
    rounds = [json.loads(x) for x in (tmp_path / "out" / "fed-medlora-plus-client-dp" / "rounds.jsonl").open()]
    assert round(rounds[-1]["privacy"]["client"]["epsilon"], 2) == client["ε client-level"]
    compared = {p["comparison"] for p in summary["paired"]}
    assert {f"{name} vs Fed-MedLoRA" for name in privacy} <= compared
    assert (tmp_path / "out" / "plots" / "f1_vs_epsilon.png").is_file()
