"""End-to-end federation on a tiny random Llama: real ServerApp + ClientApp, in-process driver, 3 sites.

Checks what crossed the wire (only adapter tensors + scalar metrics + a short site name), the round logs, the
checkpoints, every aggregation rule, and that resuming after round 1 reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinymodel import build_tiny_world, tiny_federation_config, tiny_world_config

pytestmark = pytest.mark.slow

SITES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny model folder and a 3-site benchmark (sites of different sizes) + the coordinator's validation set."""
    return build_tiny_world(tmp_path_factory.mktemp("fedworld"), SITES, [2, 3, 4])


def _cfg(world: Path, rule: str = "fedmedlora", rounds: int = 2, *extra: str):
    return tiny_federation_config(world, "sim", SITES, f"federation.strategy={rule}", *extra, rounds=rounds)


def _run(world: Path, out: Path, cfg, resume: bool = False):
    from fedmedlora.federation.simulation import run_federation

    return run_federation(cfg, out, resume=resume, data_dir=world / "bench")


def _assert_only_adapter_traffic(result, adapter_spec: dict[str, tuple[list[int], str]]) -> None:
    from fedmedlora.federation.messages import ALLOWED_METRICS

    assert result.wire, "no message was recorded"
    for rec in result.wire:
        assert rec.error is None, rec.error
        for t in rec.content["tensors"]:
            assert t["record"] == "arrays"
            assert "lora_" in t["name"], t["name"]
            assert (t["shape"], t["dtype"]) == adapter_spec[t["name"]], t["name"]
        if rec.direction == "down":
            assert rec.content["configs"] == {
                "config": ["compression", "rule", "secure-aggregation", "send-private", "server-round"]
            }
            assert rec.content["metrics"] == {}
        else:
            assert rec.content["configs"] == {"info": ["site"]}
            assert set(rec.content["metrics"]["metrics"]) <= ALLOWED_METRICS
        # the serialised message is the tensors plus a little framing, never e.g. a dataset
        assert rec.wire_bytes < rec.content["serialized_bytes"] + 4096


def test_two_rounds_three_sites_logs_checkpoints_and_resume(world: Path, tmp_path: Path) -> None:
    from fedmedlora.lm.adapter_io import load_adapter_arrays, read_adapter_meta

    cfg = _cfg(world)
    full = _run(world, tmp_path / "full", cfg)

    init = load_adapter_arrays(tmp_path / "full" / "adapters" / "round_0")
    spec = {k: (list(v.shape), v.dtype.name) for k, v in init.items()}
    _assert_only_adapter_traffic(full, spec)
    assert [(r.direction, r.site) for r in full.wire[:6]] == [("down", s) for s in SITES] + [("up", s) for s in SITES]
    assert all(len(r.content["tensors"]) == len(init) for r in full.wire)  # Fed-MedLoRA: all A and B tensors

    rounds = full.rounds
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert r["sites"] == SITES
        assert sum(r["weights"].values()) == pytest.approx(1.0)
        total = sum(r["sizes"].values())
        assert r["weights"] == pytest.approx({s: n / total for s, n in r["sizes"].items()})
        assert r["sizes"]["alpha"] < r["sizes"]["beta"] < r["sizes"]["gamma"]  # 2, 3, 4 training documents
        assert set(r["train_loss"]) == set(SITES) and np.isfinite(r["val_loss"])
        payload = sum(v.nbytes for v in init.values())
        assert r["bytes_up"] == dict.fromkeys(SITES, payload) and r["bytes_down"] == dict.fromkeys(SITES, payload)
        assert r["seconds"] >= 0
    comm = [json.loads(x) for x in (tmp_path / "full" / "comm.jsonl").read_text().splitlines()]
    assert len(comm) == 12 and {c["site"] for c in comm} == set(SITES)

    for name in ("round_0", "round_1", "round_2", "final"):
        folder = tmp_path / "full" / "adapters" / name
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert read_adapter_meta(tmp_path / "full" / "adapters" / "round_2")["round"] == 2
    final = load_adapter_arrays(tmp_path / "full" / "adapters" / "final")
    assert any(np.abs(final[k]).sum() > 0 for k in final if "lora_B" in k)  # training moved B away from 0
    for k in final:
        np.testing.assert_array_equal(final[k], full.arrays[k])

    # Interrupted after round 1, then resumed: same adapter, same round records.
    part = tmp_path / "part"
    one = _run(world, part, _cfg(world, rounds=1))
    assert [r["round"] for r in one.rounds] == [0, 1]
    resumed = _run(world, part, cfg, resume=True)
    assert [r["round"] for r in resumed.rounds] == [0, 1, 2]
    assert {r.direction for r in resumed.wire} == {"down", "up"} and len(resumed.wire) == 6  # round 2 only
    for k in full.arrays:
        np.testing.assert_allclose(resumed.arrays[k], full.arrays[k], rtol=0, atol=1e-7)
    for a, b in zip(full.rounds, resumed.rounds, strict=True):
        for key in ("sites", "weights", "train_loss", "val_loss"):
            assert a.get(key) == pytest.approx(b.get(key)), key


def test_resume_refuses_a_different_rule(world: Path, tmp_path: Path) -> None:
    from fedmedlora.federation.checkpoint import ResumeError

    _run(world, tmp_path / "r", _cfg(world, rounds=1))
    with pytest.raises(ResumeError, match="rule was 'fedmedlora'"):
        _run(world, tmp_path / "r", _cfg(world, "ffa", 2), resume=True)


def test_fedsa_uploads_a_only_and_keeps_b_at_the_site(world: Path, tmp_path: Path) -> None:
    from fedmedlora.federation.site_state import run_key
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    cfg = _cfg(world, "fedsa", 2)
    res = _run(world, tmp_path / "fedsa", cfg)
    up1 = [r for r in res.wire if r.direction == "up"][:3]
    up2 = [r for r in res.wire if r.direction == "up"][3:]
    assert all(t["name"].endswith("lora_A.weight") for r in up1 for t in r.content["tensors"])
    assert any(t["name"].endswith("lora_B.weight") for t in up2[0].content["tensors"])  # last round: full adapter
    assert res.rounds[1]["val_loss"] == pytest.approx(res.rounds[0]["val_loss"])  # server B stays 0 during training
    saved = sorted(str(p.relative_to(tmp_path / "fedsa" / "site_state")) for p in (tmp_path / "fedsa").rglob("*.pb"))
    assert saved == [f"{s}/{run_key(cfg)}/round_{r}.pb" for s in SITES for r in (1, 2)]
    init = load_adapter_arrays(tmp_path / "fedsa" / "adapters" / "round_0")
    assert any(np.abs(res.arrays[k]).sum() > 0 for k in init if "lora_B" in k)


def test_resume_after_a_crash_mid_round_restores_site_state_of_the_checkpoint(world: Path, tmp_path: Path) -> None:
    """FedSA keeps lora_B at each site between rounds. The run dies in round 3 after one site has already trained
    (and updated its private B); resuming from the round-2 checkpoint must start that site from its round-2 state,
    or the resumed run drifts from the uninterrupted one."""
    from fedmedlora.federation import client_app as client_module

    class Crash(BaseException):  # not an Exception: the grid must not turn it into a site error
        pass

    def dies_in_round_3(msg, ctx):
        if ctx.node_config["site"] == "beta" and msg.content.config_records["config"]["server-round"] == 3:
            raise Crash
        return client_module.app(msg, ctx)

    cfg = _cfg(world, "fedsa", 4)
    full = _run(world, tmp_path / "full", cfg)
    from fedmedlora.federation.simulation import run_federation

    with pytest.raises(Crash):
        run_federation(cfg, tmp_path / "crash", data_dir=world / "bench", client_app=dies_in_round_3)
    assert json.loads((tmp_path / "crash" / "federation_state.json").read_text())["round"] == 2
    from fedmedlora.federation.site_state import run_key

    # alpha trained round 3, then the crash: its round-3 state is on disk, and resume must not start from it
    assert (tmp_path / "crash" / "site_state" / "alpha" / run_key(cfg) / "round_3.pb").is_file()
    resumed = _run(world, tmp_path / "crash", cfg, resume=True)
    assert [r["round"] for r in resumed.rounds] == [0, 1, 2, 3, 4]
    for k in full.arrays:
        np.testing.assert_allclose(resumed.arrays[k], full.arrays[k], rtol=0, atol=1e-7, err_msg=k)


def test_ffa_keeps_a_frozen_and_uploads_b_only(world: Path, tmp_path: Path) -> None:
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    res = _run(world, tmp_path / "ffa", _cfg(world, "ffa", 1))
    assert all(
        t["name"].endswith("lora_B.weight") for r in res.wire if r.direction == "up" for t in r.content["tensors"]
    )
    init = load_adapter_arrays(tmp_path / "ffa" / "adapters" / "round_0")
    for k in init:
        if "lora_A" in k:
            np.testing.assert_array_equal(res.arrays[k], init[k])


@pytest.mark.parametrize("source", ["server", "site"])
def test_fedmedlora_plus_weights_from_validation_loss(world: Path, tmp_path: Path, source: str) -> None:
    res = _run(world, tmp_path / source, _cfg(world, "fedmedlora+", 1, f"federation.plus_loss_source={source}"))
    r = res.rounds[1]
    assert r["loss_source"] == source and set(r["losses"]) == set(SITES)
    losses = np.array([r["losses"][s] for s in SITES])
    expected = np.exp(-(losses - losses.min()))
    np.testing.assert_allclose([r["weights"][s] for s in SITES], expected / expected.sum(), rtol=1e-9)
    up_metrics = {m for rec in res.wire if rec.direction == "up" for m in rec.content["metrics"]["metrics"]}
    assert ("site-val-loss" in up_metrics) == (source == "site")


def test_node_without_site_is_refused() -> None:
    from flwr.app import Context, RecordDict

    from fedmedlora.config import RunConfig
    from fedmedlora.federation.site import SiteConfigError, site_of

    cfg = RunConfig()
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(SiteConfigError, match="lacks 'site'"):
        site_of(ctx, cfg)
    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    with pytest.raises(SiteConfigError, match="partition-id=1"):
        site_of(ctx, cfg)
    cfg = RunConfig.model_validate({"federation": {"sites": ["a", "b"]}, "data": {"benchmark": "/sim/bench"}})
    assert site_of(ctx, cfg) == ("b", Path("/sim/bench"))
    ctx = Context(run_id=1, node_id=5, node_config={"site": "chia"}, state=RecordDict(), run_config={})
    with pytest.raises(SiteConfigError, match="lacks 'data-dir'"):
        site_of(ctx, cfg)  # a hospital node never falls back to some other data
    ctx = Context(
        run_id=1, node_id=5, node_config={"site": "chia", "data-dir": "/h"}, state=RecordDict(), run_config={}
    )
    assert site_of(ctx, cfg) == ("chia", Path("/h"))


@pytest.mark.parametrize(
    ("method", "up_dtypes", "ratio"), [("bf16", {"uint16"}, 0.5), ("int8", {"int8", "float32"}, 0.3)]
)
def test_compressed_transport_shrinks_bytes_and_tracks_the_float32_run(
    world: Path, tmp_path: Path, method: str, up_dtypes: set[str], ratio: float
) -> None:
    plain = _run(world, tmp_path / "plain", _cfg(world))
    packed = _run(world, tmp_path / method, _cfg(world, "fedmedlora", 2, f"federation.compression={method}"))
    for rec in packed.wire:
        dtypes = {t["dtype"] for t in rec.content["tensors"]}
        if rec.direction == "up":
            assert dtypes == up_dtypes
            if method == "int8":  # one float32 scale per tensor travels beside the int8 values
                assert any(t["name"].endswith("::scale") for t in rec.content["tensors"])
        else:
            assert dtypes == {"uint16" if method == "bf16" else "float16"}
    for r_plain, r_packed in zip(plain.rounds[1:], packed.rounds[1:], strict=True):
        for site in SITES:
            assert r_packed["bytes_up"][site] <= ratio * r_plain["bytes_up"][site] + 64 * 40
    # lossy transport, same federation: the final adapters stay close
    for k, v in plain.arrays.items():
        scale = float(np.abs(v).max()) or 1.0
        assert float(np.abs(packed.arrays[k] - v).max()) <= 0.05 * scale, k


def test_misspelled_site_and_changed_config_are_refused(world: Path, tmp_path: Path) -> None:
    from fedmedlora.federation.checkpoint import ResumeError

    bad = _cfg(world).model_copy(
        update={"federation": _cfg(world).federation.model_copy(update={"sites": ["alpha", "betta"]})}
    )
    with pytest.raises(ValueError, match=r"no data folder for \['betta'\]"):
        _run(world, tmp_path / "typo", bad)
    _run(world, tmp_path / "one", _cfg(world, "fedmedlora", 1))
    with pytest.raises(ResumeError, match=r"configuration changed.*train.max_steps"):
        _run(world, tmp_path / "one", _cfg(world, "fedmedlora", 2, "train.max_steps=3"), resume=True)


def test_fed_run_scores_the_final_adapter_and_records_it_in_run_json(world: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedmedlora.benchmark import open_benchmark
    from fedmedlora.cli import app

    # the command scores on a benchmark with a manifest: the bundled sample (no data.benchmark), this world's model
    cfg = tiny_world_config(
        world, "fed-run", "train.max_steps=1", "data.max_train_examples=2", "federation.rounds=1",
        "federation.round_eval_sentences=1", "eval.max_sentences=1", "eval.max_new_tokens=4",
    )  # fmt: skip
    cfg.save(tmp_path / "fed.yaml")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fed", "run", "--out", str(out), "--config", str(tmp_path / "fed.yaml")])
    assert r.exit_code == 0, r.output
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["rounds_completed"] == 1
    # the evaluation after the federation is recorded like a local row's (its time, the peak memory so far)
    assert run["eval_seconds"] > 0 and run["peak_rss_mb"] > 0
    scores = json.loads((out / "eval" / "test.json").read_text())
    assert set(open_benchmark(None).sites) <= set(scores)


def test_an_interrupted_federation_says_so_in_run_json(world: Path, tmp_path: Path) -> None:
    from fedmedlora.federation.simulation import run_federation

    def interrupted(msg, ctx):  # what SIGTERM does under `fedmedlora` (SystemExit) or Ctrl-C (KeyboardInterrupt)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_federation(_cfg(world), tmp_path / "run", data_dir=world / "bench", client_app=interrupted)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "interrupted" and run["error"].startswith("KeyboardInterrupt")


def test_a_site_with_corrupt_data_is_named_by_its_site_name(world: Path, tmp_path: Path) -> None:
    import shutil

    bench = tmp_path / "bench"
    shutil.copytree(world / "bench", bench)
    (bench / "beta" / "train.jsonl").write_text('{"id": "broken"\n', encoding="utf-8")
    from fedmedlora.federation.simulation import run_federation

    cfg = _cfg(world, "fedmedlora", 1, "federation.min_sites=2")
    res = run_federation(cfg, tmp_path / "run", data_dir=bench)
    r = res.rounds[1]
    assert r["sites"] == ["alpha", "gamma"]
    assert any(f.startswith("beta: ") and "train.jsonl" in f for f in r["failures"]), r["failures"]
