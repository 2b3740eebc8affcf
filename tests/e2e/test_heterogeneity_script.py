"""scripts/heterogeneity.sh end to end at the smallest size: the bundled sample split into 3 sites (α = 0.1), the
tiny random model, RoLoRA and Fed-MedLoRA+ (data-chosen temperature) next to the centralized row. Checks the
plumbing only (a random model scores 0): the partition, the study table with its single-site rows, the round logs,
the total local steps split over the sites, and the paired comparison of Fed-MedLoRA+ at T = 1 against the
data-chosen T."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinymodel import save_tiny_model, tiny_model_overrides

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_heterogeneity_script_smallest_size(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "fedmedlora"
    if not exe.is_file():
        pytest.skip(f"{exe}: the fedmedlora command is not installed next to this Python")
    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "FEDMEDLORA": str(exe),
        "OUT": str(out),
        "SITES": "3",
        "ALPHAS": "0.1",
        "METHODS": "fedmedlora+ rolora",
        "FIXED_T": "1",
        "WITH_SIZE": "1",
        "TOTAL_STEPS": "6",
        "DROP_OTHER_SITES": "1",
        "OMP_NUM_THREADS": "1",
    }
    tiny = [
        *tiny_model_overrides(model),
        "train.batch_size=2",
        "train.max_length=768",
        "data.max_train_examples=4",
        "eval.max_sentences=2",
        "eval.max_new_tokens=8",
        "federation.rounds=2",
        "federation.round_eval_sentences=0",
    ]
    args = [a for s in tiny for a in ("-s", s)]
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "heterogeneity.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = json.loads((out / "bench-n3-a0.1" / "benchmark.json").read_text())
    assert manifest["partition"]["alpha"] == 0.1 and manifest["partition"]["n_sites"] == 3
    assert manifest["partition"]["sites_left_out"] == ["maccrobat"] and "maccrobat" not in manifest["sites"]
    study = out / "study-n3-a0.1"
    rows = {line.split(",")[0] for line in (study / "study.csv").read_text().splitlines()[1:]}
    assert {"centralized", "Fed-MedLoRA+", "RoLoRA"} | {f"single-site (site0{k})" for k in (1, 2, 3)} <= rows
    assert "max_steps: 2" in (study / "rolora" / "config.yaml").read_text()  # TOTAL_STEPS=6 over 3 sites
    compare = (out / "study-n3-a0.1-fixedT" / "compare.md").read_text()
    assert "Fed-MedLoRA+ (data-chosen T) vs Fed-MedLoRA+ (T = 1)" in compare and "| NER strict |" in compare
    size = (out / "study-n3-a0.1-size" / "compare.md").read_text()
    assert "Fed-MedLoRA+ (x size) vs Fed-MedLoRA+ (data-chosen T)" in size
    assert "combine_with_size: true" in (out / "study-n3-a0.1-size" / "fed-medlora-plus" / "config.yaml").read_text()
    rolora = [json.loads(x) for x in (study / "rolora" / "rounds.jsonl").read_text().splitlines()]
    assert [r.get("trained_factor") for r in rolora[1:]] == ["B", "A"]
    assert all(0 <= r["weights_entropy"] <= 1 for r in rolora[1:])
    plus = [json.loads(x) for x in (study / "fed-medlora-plus" / "rounds.jsonl").read_text().splitlines()]
    assert all(set(r["weights"]) == {"site01", "site02", "site03"} for r in plus[1:])
    assert all(r["weights_entropy"] is not None for r in plus[1:])

    # the experiment's tables and plots (scripts/heterogeneity_report.py) from the same folders
    rep = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "heterogeneity_report.py"), str(out), "--plots", str(tmp_path / "img")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "| 3 sites, α=0.1 (" in rep.stdout and "| RoLoRA |" in rep.stdout
    assert "Fed-MedLoRA+ vs Fed-MedLoRA+ (T = 1) | in-domain, all sites | NER strict |" in rep.stdout
    assert (tmp_path / "img" / "heterogeneity_f1.png").stat().st_size > 0
    assert "Fed-MedLoRA+ vs Fed-MedLoRA+ (× size) | in-domain, all sites | NER strict |" in rep.stdout
    assert (tmp_path / "img" / "heterogeneity_weights.png").stat().st_size > 0
    assert (tmp_path / "img" / "heterogeneity_weights_per_round.png").stat().st_size > 0
