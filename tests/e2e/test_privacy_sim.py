"""Privacy end to end on the tiny 3-site world (real ServerApp + ClientApp, in-process driver).

Record-level DP-SGD at every site and client-level DP at the coordinator together for 2 rounds: the ε written
to ``rounds.jsonl`` is checked against direct accountant calls (dp-accounting for the coordinator's Gaussian
releases, Opacus's RDP for each site's Poisson-sampled steps), the sites' training losses never leave them, and
sites out of budget refuse (one of them: the round goes on without it; all of them: the run stops cleanly).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinymodel import build_tiny_world, tiny_federation_config

pytestmark = pytest.mark.slow

SITES = ["alpha", "beta", "gamma"]
DOCS = [2, 3, 4]  # training documents per site; batch 2 → Poisson rates 1, 2/3, 1/2


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("dpworld"), SITES, DOCS)


def _cfg(world: Path, *extra: str):
    return tiny_federation_config(world, "dp", SITES, *extra)


def _run(world: Path, out: Path, cfg):
    from fedmedlora.federation.simulation import run_federation

    return run_federation(cfg, out, data_dir=world / "bench")


def _site_epsilon(sigma: float, rate: float, steps: int, rounds: int, delta: float = 1e-5) -> float:
    from fedmedlora.lm.dp import epsilon_of
    from fedmedlora.privacy import LedgerEntry, PrivacyLedger

    return epsilon_of(PrivacyLedger([LedgerEntry(sigma, rate, steps)] * rounds), delta)


def test_dpsgd_and_client_dp_two_rounds_epsilon_matches_the_accountants(world: Path, tmp_path: Path) -> None:
    from dp_accounting import dp_event, rdp

    cfg = _cfg(
        world, "train.dp.noise_multiplier=2.0", "federation.dp.noise_multiplier=1.5", "federation.dp.clip_norm=0.5"
    )
    result = _run(world, tmp_path / "run", cfg)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["privacy"]["client"]["noise_multiplier"] == 1.5

    for r in rounds[1:]:
        n = r["round"]
        # record level: each site's ε after n rounds of 2 steps at its own Poisson rate
        for site, docs in zip(SITES, DOCS, strict=True):
            expected = _site_epsilon(2.0, min(1.0, 2 / docs), 2, n)
            assert r["privacy"]["sites"][site] == pytest.approx(expected, rel=1e-6), (n, site)
        # client level: n Gaussian releases with noise multiplier 1.5 (no sampling amplification)
        acc = rdp.RdpAccountant()
        acc.compose(dp_event.GaussianDpEvent(1.5), n)
        client = r["privacy"]["client"]
        assert client["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)
        weights = list(r["weights"].values())
        assert client["noise_std"] == pytest.approx(1.5 * 0.5 * max(weights))
        assert client["over_clip"] == []  # every site clipped its own update
        assert r["train_loss"] == {}  # under DP-SGD the sites do not release their training loss

    for rec in result.wire:
        if rec.direction == "up":
            assert "train-loss" not in rec.content["metrics"]["metrics"]
            assert "dp-epsilon" in rec.content["metrics"]["metrics"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "done"


def test_a_site_out_of_budget_refuses_and_the_round_goes_on(world: Path, tmp_path: Path) -> None:
    # σ=2, 2 steps: alpha (rate 1) reaches ε≈3.19 after round 1 and ≈4.73 after round 2; the others stay below 4
    assert _site_epsilon(2.0, 1.0, 2, 2) > 4.0 > _site_epsilon(2.0, 2 / 3, 2, 2)
    cfg = _cfg(world, "train.dp.noise_multiplier=2.0", "train.dp.max_epsilon=4.0", "federation.min_sites=2")
    _run(world, tmp_path / "run", cfg)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[1]["sites"] == SITES and rounds[1]["refused"] == {}
    assert rounds[2]["sites"] == ["beta", "gamma"]
    assert rounds[2]["refused"] == {"alpha": pytest.approx(_site_epsilon(2.0, 1.0, 2, 1), rel=1e-6)}
    assert any("alpha: refused to train" in f for f in rounds[2]["failures"])


def test_every_site_out_of_budget_stops_the_run_cleanly(world: Path, tmp_path: Path) -> None:
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    cfg = _cfg(world, "train.dp.noise_multiplier=2.0", "train.dp.max_epsilon=1.0")
    _run(world, tmp_path / "run", cfg)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "stopped" and run["rounds_completed"] == 0
    assert "privacy budget" in run["reason"]
    final = load_adapter_arrays(tmp_path / "run" / "adapters" / "final")
    init = load_adapter_arrays(tmp_path / "run" / "adapters" / "round_0")
    assert all((final[k] == init[k]).all() for k in init)


def test_client_level_budget_limits_the_rounds(world: Path, tmp_path: Path) -> None:
    from fedmedlora.federation.client_dp import gaussian_rounds_epsilon

    # noise 1.0: ε≈4.7 after one release, more after two; a budget of 6 affords exactly one round
    assert gaussian_rounds_epsilon(1.0, 1, 1e-5) < 6.0 < gaussian_rounds_epsilon(1.0, 2, 1e-5)
    cfg = _cfg(world, "federation.dp.noise_multiplier=1.0", "federation.dp.max_epsilon=6.0")
    _run(world, tmp_path / "run", cfg)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["privacy"]["client"]["epsilon"] <= 6.0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "stopped" and run["rounds_completed"] == 1 and "max_epsilon=6.0" in run["reason"]


# ---- secure aggregation (SecAgg+) ----------------------------------------------------------------------------


def _adapter(run: Path, name: str):
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    return load_adapter_arrays(run / "adapters" / name)


def _max_diff(a, b) -> float:
    return max(float(abs(a[k].astype("float64") - b[k]).max()) for k in a)


def test_secure_aggregation_equals_the_plain_aggregate_and_hides_every_adapter(world: Path, tmp_path: Path) -> None:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    plain = _run(world, tmp_path / "plain", _cfg(world))
    secure = _run(world, tmp_path / "secure", _cfg(world, "federation.secure_aggregation=true"))
    # same seeds → same site updates; SecAgg+ adds only its quantisation error (2·8 / 2**22 per step, stochastic)
    for name in ("round_1", "round_2", "final"):
        assert _max_diff(_adapter(tmp_path / "secure", name), _adapter(tmp_path / "plain", name)) < 2e-4, name
    # the coordinator never receives a tensor from a site: train replies carry scalars, SecAgg+ replies masked bytes
    ups = [rec for rec in secure.wire if rec.direction == "up"]
    assert ups and all(rec.content["tensors"] == [] for rec in ups)
    assert any(rec.content["configs"].get(RECORD_KEY_CONFIGS) for rec in ups)  # the SecAgg+ stages
    assert plain.wire and any(rec.content["tensors"] for rec in plain.wire if rec.direction == "up")
    rounds = [json.loads(line) for line in (tmp_path / "secure" / "rounds.jsonl").read_text().splitlines()]
    for r in rounds[1:]:
        assert r["privacy"]["secure_aggregation"] == {"sites": SITES, "dropped": []}
        assert all(b > 0 for b in r["bytes_up"].values())  # the masked vectors are counted


def test_secure_aggregation_survives_a_site_dropping_out_mid_protocol(world: Path, tmp_path: Path) -> None:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    from fedmedlora.federation import client_app as client_module
    from fedmedlora.federation.simulation import run_federation

    def flaky(msg, ctx):
        cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if ctx.node_config["site"] == "beta" and cfg is not None and cfg.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
            raise ConnectionError("beta lost its network after the key exchange")
        return client_module.app(msg, ctx)

    cfg = _cfg(world, "federation.secure_aggregation=true", "federation.rounds=1", "federation.min_sites=2")
    run_federation(cfg, tmp_path / "secure", data_dir=world / "bench", client_app=flaky)
    rounds = [json.loads(line) for line in (tmp_path / "secure" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[1]["privacy"]["secure_aggregation"] == {"sites": ["alpha", "gamma"], "dropped": ["beta"]}
    assert rounds[1]["sites"] == ["alpha", "gamma"]
    assert any("beta: dropped out during SecAgg+" in f for f in rounds[1]["failures"])
    # the round's adapter is the mean of the two survivors: the plain federation of alpha and gamma alone
    two = _cfg(world, "federation.rounds=1", "federation.sites=[alpha,gamma]", "federation.min_sites=2")
    _run(world, tmp_path / "two", two)
    assert _max_diff(_adapter(tmp_path / "secure", "round_1"), _adapter(tmp_path / "two", "round_1")) < 2e-4


def test_private_fedmedlora_plus_under_secure_aggregation(world: Path, tmp_path: Path) -> None:
    """Fed-MedLoRA+ with each site's own dev loss: the scalars go first, the weighted update under SecAgg+."""
    extra = ("federation.strategy=fedmedlora+", "federation.plus_loss_source=site")
    plain = _run(world, tmp_path / "plain", _cfg(world, *extra))
    _run(world, tmp_path / "secure", _cfg(world, *extra, "federation.secure_aggregation=true"))
    rounds = [json.loads(line) for line in (tmp_path / "secure" / "rounds.jsonl").read_text().splitlines()]
    plain_rounds = [r for r in plain.rounds if r["round"] > 0]
    for r, p in zip(rounds[1:], plain_rounds, strict=True):
        # round 1 starts from the same adapter; later rounds from globals that differ by the quantisation error
        assert r["loss_source"] == "site" and r["weights"] == pytest.approx(p["weights"], rel=1e-4)
    assert _max_diff(_adapter(tmp_path / "secure", "final"), _adapter(tmp_path / "plain", "final")) < 2e-4


def test_secure_aggregation_refuses_the_server_held_fedmedlora_plus():
    from fedmedlora.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="plus_loss_source=site"):
        load_config(overrides=["federation.secure_aggregation=true", "federation.strategy=fedmedlora+"])


def test_resume_refuses_a_new_round_count_when_the_noise_was_calibrated(world: Path, tmp_path: Path) -> None:
    from fedmedlora.federation.checkpoint import ResumeError
    from fedmedlora.federation.simulation import run_federation

    cfg = _cfg(world, "federation.rounds=1", "federation.dp.target_epsilon=20")
    _run(world, tmp_path / "run", cfg)
    longer = _cfg(world, "federation.rounds=2", "federation.dp.target_epsilon=20")
    with pytest.raises(ResumeError, match="calibrated by target_epsilon for 1 rounds"):
        run_federation(longer, tmp_path / "run", resume=True, data_dir=world / "bench")


def test_dpsgd_with_secure_aggregation_two_rounds(world: Path, tmp_path: Path) -> None:
    """The issue's end-to-end check: DP-SGD + SecAgg+, 2 rounds, 3 sites; ε in rounds.jsonl = a direct accountant
    call, and every round summed all three sites without any tensor reaching the coordinator."""
    cfg = _cfg(world, "train.dp.noise_multiplier=2.0", "federation.secure_aggregation=true")
    result = _run(world, tmp_path / "run", cfg)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    for r in rounds[1:]:
        for site, docs in zip(SITES, DOCS, strict=True):
            assert r["privacy"]["sites"][site] == pytest.approx(_site_epsilon(2.0, min(1.0, 2 / docs), 2, r["round"]))
        assert r["privacy"]["secure_aggregation"] == {"sites": SITES, "dropped": []}
    assert all(rec.content["tensors"] == [] for rec in result.wire if rec.direction == "up")


def test_a_round_re_run_after_a_crash_is_counted_twice_in_the_ledger(world: Path, tmp_path: Path) -> None:
    """alpha trains (and releases) round 2, then the coordinator dies before checkpointing it; the resumed run
    re-trains round 2 from alpha's round-1 state, but alpha's ledger keeps the first release: 3 entries, not 2."""
    from fedmedlora.federation import client_app as client_module
    from fedmedlora.federation.simulation import run_federation

    class Crash(BaseException):
        pass

    def dies_in_round_2(msg, ctx):
        config = msg.content.config_records.get("config")
        if ctx.node_config["site"] == "beta" and config is not None and config["server-round"] == 2:
            raise Crash
        return client_module.app(msg, ctx)

    cfg = _cfg(world, "train.dp.noise_multiplier=2.0")
    with pytest.raises(Crash):
        run_federation(cfg, tmp_path / "run", data_dir=world / "bench", client_app=dies_in_round_2)
    run_federation(cfg, tmp_path / "run", resume=True, data_dir=world / "bench")
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    eps = rounds[2]["privacy"]["sites"]
    assert eps["alpha"] == pytest.approx(_site_epsilon(2.0, 1.0, 2, 3))  # round 2 released twice
    assert eps["beta"] == pytest.approx(_site_epsilon(2.0, 2 / 3, 2, 2))  # beta crashed before training
