"""RoLoRA end to end on a tiny random Llama: 2 rounds, 3 sites, real ServerApp + ClientApp in process.

Round 1 trains and uploads only ``lora_B`` (A frozen at the shared initialisation), round 2 only ``lora_A`` (B frozen
at round 1's aggregate); each upload is half the adapter; ``rounds.jsonl`` records the trained factor and the
weights' normalised entropy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinymodel import build_tiny_world, tiny_federation_config

pytestmark = pytest.mark.slow

SITES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("roloraworld"), SITES, [2, 3, 4])


def _run(world: Path, out: Path, *extra: str):
    from fedmedlora.federation.simulation import run_federation

    cfg = tiny_federation_config(world, "rolora", SITES, "federation.strategy=rolora", *extra, rounds=2)
    return run_federation(cfg, out, data_dir=world / "bench")


def test_rolora_two_rounds_alternate_the_factor(world: Path, tmp_path: Path) -> None:
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    out = tmp_path / "run"
    res = _run(world, out)

    init = load_adapter_arrays(out / "adapters" / "round_0")
    r1 = load_adapter_arrays(out / "adapters" / "round_1")
    r2 = load_adapter_arrays(out / "adapters" / "round_2")
    a_keys = [k for k in init if "lora_A" in k]
    b_keys = [k for k in init if "lora_B" in k]
    assert a_keys and b_keys
    for k in a_keys:  # round 1: A frozen; round 2: A trained
        np.testing.assert_array_equal(r1[k], init[k])
    assert any(not np.array_equal(r2[k], r1[k]) for k in a_keys)
    for k in b_keys:  # round 1: B trained away from 0; round 2: B frozen
        np.testing.assert_array_equal(r2[k], r1[k])
    assert any(np.abs(r1[k]).sum() > 0 for k in b_keys)

    ups = [r for r in res.wire if r.direction == "up"]
    assert len(ups) == 6
    names = [{t["name"] for t in r.content["tensors"]} for r in ups]
    assert names[:3] == [set(b_keys)] * 3 and names[3:] == [set(a_keys)] * 3

    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    payload = sum(v.nbytes for v in init.values())
    by_round = {r["round"]: r for r in rounds}
    for rnd, factor, keys in ((1, "B", b_keys), (2, "A", a_keys)):
        r = by_round[rnd]
        assert r["rule"] == "rolora" and r["trained_factor"] == factor and r["sites"] == SITES
        assert r["bytes_up"] == dict.fromkeys(SITES, sum(init[k].nbytes for k in keys))
        assert 0.3 * payload < sum(r["bytes_up"].values()) / 3 < 0.7 * payload
        assert 0 < r["weights_entropy"] < 1  # size weights of 2, 3, 4 documents: not uniform
    comm = [json.loads(x) for x in (out / "comm.jsonl").read_text().splitlines()]
    up_bytes = sum(c["bytes"] for c in comm if c["direction"] == "up")
    assert up_bytes == pytest.approx(3 * payload, rel=0.05)  # 2 rounds × 3 sites × half the adapter


@pytest.mark.parametrize(
    "extra",
    [
        ("federation.secure_aggregation=true",),
        ("federation.dp.noise_multiplier=0.5", "federation.dp.clip_norm=0.5", "federation.dp.reproducible_noise=true"),
    ],
    ids=["secagg", "client-dp"],
)
def test_rolora_composes_with_secure_aggregation_and_client_dp(world: Path, tmp_path: Path, extra) -> None:
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    plain = tmp_path / "plain"
    _run(world, plain)
    res = _run(world, tmp_path / "x", *extra)
    init = load_adapter_arrays(tmp_path / "x" / "adapters" / "round_0")
    r1 = load_adapter_arrays(tmp_path / "x" / "adapters" / "round_1")
    r2 = load_adapter_arrays(tmp_path / "x" / "adapters" / "round_2")
    p2 = load_adapter_arrays(plain / "adapters" / "round_2")
    for k in init:  # the frozen factor never moves: no noise or quantisation error lands on it
        if "lora_A" in k:
            np.testing.assert_array_equal(r1[k], init[k])
        else:
            np.testing.assert_array_equal(r2[k], r1[k])
    diff = max(float(np.abs(r2[k] - p2[k]).max()) for k in p2)
    if "federation.secure_aggregation=true" in extra:
        assert diff < 2e-4  # SecAgg+ adds only its quantisation error
        assert all(rec.content["tensors"] == [] for rec in res.wire if rec.direction == "up")
    else:
        assert diff > 1e-3  # the coordinator's noise is there
        rounds = [json.loads(x) for x in (tmp_path / "x" / "rounds.jsonl").read_text().splitlines()]
        assert all(r["privacy"]["client"]["epsilon"] > 0 for r in rounds[1:])


def test_rolora_weighted_by_the_sites_dev_losses(world: Path, tmp_path: Path) -> None:
    extra = ("federation.rolora_weights=loss", "federation.plus_loss_source=site", "federation.temperature_rule=range")
    res = _run(world, tmp_path / "loss", *extra)
    for r in res.rounds[1:]:
        losses = np.array([r["losses"][s] for s in SITES])
        t = losses.max() - losses.min()
        expected = np.exp(-(losses - losses.min()) / t)
        np.testing.assert_allclose([r["weights"][s] for s in SITES], expected / expected.sum(), rtol=1e-9)
        assert r["temperature"] == pytest.approx(t) and r["loss_source"] == "site"
    up_metrics = {m for rec in res.wire if rec.direction == "up" for m in rec.content["metrics"]["metrics"]}
    assert "site-val-loss" in up_metrics
