"""Real Deployment Engine on loopback: a TLS SuperLink with node authentication and three hospital SuperNodes,
each a separate process group with its own FLWR_HOME, running the real fedmedlora ServerApp/ClientApp on a tiny
random Llama.

Covers: a 2-round federation equal to the in-process simulation; an unregistered hospital key refused; one
hospital going down during a round (the run finishes with the other two and the failure is logged) and coming
back with the same node id; the coordinator (SuperLink + ServerApp) crashing after round 1 and the resumed run
finishing with every round recorded once and the same adapter as the uninterrupted run.

Processes are torn down by their recorded process groups (never by name); every wait has a timeout. Timeouts are
generous because each round starts fresh ``flwr-clientapp`` processes that import torch on a loaded 2-core box.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedmedlora.deploy.loopback import CONNECTION, LoopbackDeployment
from tinymodel import build_tiny_world, tiny_world_config

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("ssh-keygen") is None, reason="needs openssl and ssh-keygen"
)

SITES = ["alpha", "beta", "gamma"]
START_TIMEOUT = 120.0  # a process to come up / a node to be online
RUN_TIMEOUT = 900.0  # a whole 2-round run


# ---- the tiny world (model + 3-site benchmark + coordinator validation set) -------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("deployworld"), SITES, [2, 3, 4])


def _cfg(world: Path, *, rounds: int = 2, min_sites: int = 3, rejoin: float = 0.0):
    """Deployment config: sites are whoever connects (``federation.sites`` unset), at least ``min_sites``."""
    return tiny_world_config(
        world,
        "deploy",
        f"federation.rounds={rounds}",
        f"federation.min_sites={min_sites}",
        "federation.round_timeout_s=900",
        f"federation.rejoin_wait_s={rejoin}",
    )


# ---- the deployment ------------------------------------------------------------------------------------------


class Deployment(LoopbackDeployment):
    """The library's loopback deployment (TLS SuperLink with node auth, one SuperNode per site) + test helpers."""

    def __init__(self, root: Path, data_dir: Path, *, resident_model: bool = False) -> None:
        from fedmedlora import deploy

        super().__init__(root, data_dir, SITES, resident_model=resident_model, start_timeout=START_TIMEOUT)
        self.d = deploy

    def status_of_nodes(self) -> dict[int, str]:
        return {int(n["node-id"]): n["status"] for n in self.d.list_nodes(CONNECTION, flwr_home=self.operator_home)}


@pytest.fixture(scope="module")
def deployment(world: Path, tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("deploy"), world / "bench")
    try:
        dep.up()
        yield dep
    finally:
        dep.down()


def _wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _rounds(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]


def _final(run_dir: Path) -> dict[str, np.ndarray]:
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    return load_adapter_arrays(run_dir / "adapters" / "final")


def _assert_same_adapter(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)


# ---- fast checks of the helpers (no Flower processes) ----------------------------------------------------------


def test_certs_have_the_sans_and_chain_to_the_ca(tmp_path: Path) -> None:
    import subprocess

    from fedmedlora import deploy

    files = deploy.generate_certs(tmp_path / "c", sans=["DNS:coord.example.org", "IP:10.0.0.5"], bits=2048)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(files.server_cert), "-noout", "-text"], capture_output=True, text=True
    ).stdout
    for san in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:coord.example.org", "IP Address:10.0.0.5"):
        assert san in text
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_cert), str(files.server_cert)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    assert oct(files.server_key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(deploy.DeployError, match="subjectAltName"):
        deploy.generate_certs(tmp_path / "bad", sans=["coord.example.org"])


def test_an_existing_ca_is_kept_unless_forced(tmp_path: Path) -> None:
    from fedmedlora import deploy

    files = deploy.generate_certs(tmp_path / "c", bits=2048)
    ca = files.ca_cert.read_bytes()
    with pytest.raises(deploy.DeployError, match=r"already holds ca\.crt"):
        deploy.generate_certs(tmp_path / "c", bits=2048)
    assert files.ca_cert.read_bytes() == ca
    deploy.generate_certs(tmp_path / "c", bits=2048, force=True)
    assert files.ca_cert.read_bytes() != ca
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ca.crt", "ca.key", "server.key", "server.pem"]
    with pytest.raises(deploy.DeployError, match="subjectAltName"):
        deploy.generate_certs(tmp_path / "d", sans=["bad"], bits=2048)
    assert list((tmp_path / "d").iterdir()) == []  # nothing partial left behind


def test_node_keys_are_ecdsa_384_and_never_overwritten(tmp_path: Path) -> None:
    from fedmedlora import deploy

    private, public = deploy.generate_node_key(tmp_path, "chia")
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    before = private.read_bytes()
    assert deploy.generate_node_key(tmp_path, "chia") == (private, public)
    assert private.read_bytes() == before
    with pytest.raises(deploy.DeployError, match="site name"):
        deploy.generate_node_key(tmp_path, "../evil")


def test_connection_section_is_replaced_and_absolute(tmp_path: Path, monkeypatch) -> None:
    import tomllib

    from fedmedlora import deploy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.crt").write_text("x")
    deploy.write_connection(tmp_path / "home", "h", "127.0.0.1:1", root_certificates="ca.crt")
    path = deploy.write_connection(tmp_path / "home", "h", "10.0.0.1:9092", root_certificates="ca.crt")
    deploy.write_connection(tmp_path / "home", "other", "127.0.0.1:2", insecure=True)
    conf = tomllib.loads(path.read_text())["superlink"]
    assert conf["h"] == {"address": "10.0.0.1:9092", "root-certificates": str((tmp_path / "ca.crt").resolve())}
    assert conf["other"] == {"address": "127.0.0.1:2", "insecure": True}
    assert conf["default"] == "local"
    with pytest.raises(deploy.DeployError, match="does not exist"):
        deploy.write_connection(tmp_path / "home", "x", "a:1", root_certificates="missing.crt")


def test_app_folder_declares_the_whole_run_config(tmp_path: Path) -> None:
    import tomllib

    from flwr.common.config import flatten_dict

    from fedmedlora import deploy
    from fedmedlora.config import RunConfig, load_config

    cfg = load_config(overrides=["federation.rounds=3", "federation.sites=[a,b]", "data.tasks=[ner]"])
    flat = deploy.app_config(cfg, run_dir=tmp_path / "run", resume=True, server_data_dir=tmp_path)
    app = deploy.write_app_dir(tmp_path / "app", flat)
    doc = tomllib.loads((app / "pyproject.toml").read_text())
    assert doc["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fedmedlora.federation.server_app:app",
        "clientapp": "fedmedlora.federation.client_app:app",
    }
    declared = flatten_dict(doc["tool"]["flwr"]["app"]["config"])
    assert declared == flat
    assert declared["run-dir"] == str((tmp_path / "run").resolve()) and declared["resume"] is True
    assert declared["num-server-rounds"] == 3
    assert RunConfig.from_flower_run_config(declared) == cfg  # what the ServerApp/ClientApp will rebuild


def test_node_config_and_commands(tmp_path: Path) -> None:
    from fedmedlora import deploy

    assert deploy.node_config_string({"site": "chia", "n": 2, "x": True}) == 'site="chia" n=2 x=true'
    with pytest.raises(deploy.DeployError, match="spaces"):
        deploy.node_config_string({"data-dir": "/a b"})
    (tmp_path / "data" / "chia").mkdir(parents=True)
    key = tmp_path / "k"
    key.write_text("k")
    args = deploy.supernode_command(
        superlink="h:1", site="chia", data_dir=tmp_path / "data", private_key=key, root_certificates=key, port=7
    )
    assert args[args.index("--node-config") + 1] == f'site="chia" data-dir="{(tmp_path / "data").resolve()}"'
    with pytest.raises(deploy.DeployError, match="phee"):
        deploy.supernode_command(
            superlink="h:1", site="phee", data_dir=tmp_path / "data", private_key=key, root_certificates=key
        )
    with pytest.raises(deploy.DeployError, match="needs TLS"):
        deploy.superlink_command(tls=None, node_auth=True)


def test_superlink_dry_run_keeps_state_on_disk_unless_in_memory(tmp_path: Path, monkeypatch, capsys) -> None:
    from fedmedlora.cli import main

    argv = ["fedmedlora", "deploy", "superlink", "--insecure", "--dry-run"]
    for extra, expect_db in (["--database", str(tmp_path / "st" / "s.db")], True), (["--in-memory"], False):
        monkeypatch.setattr(sys, "argv", [*argv, *extra])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert ("--database" in line) is expect_db, line
        if expect_db:
            assert str((tmp_path / "st" / "s.db").resolve()) in line


def test_supernode_resident_model_dry_run_prints_the_worker_and_points_the_node_at_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from fedmedlora import deploy
    from fedmedlora.cli import main
    from fedmedlora.federation import site_worker

    assert deploy.SITE_WORKER_NODE_KEY == site_worker.WORKER_NODE_KEY  # deploy must not import flwr: two constants
    (tmp_path / "data" / "chia").mkdir(parents=True)
    key = tmp_path / "k"
    key.write_text("k")
    argv = ["fedmedlora", "deploy", "supernode", "--site", "chia", "--data", str(tmp_path / "data"), "--key", str(key)]
    argv += ["--ca", str(key), "--state-dir", str(tmp_path / "st"), "--resident-model", "--threads", "3", "--dry-run"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    worker_line, node_line = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "fedmedlora.federation.site_worker" in worker_line and worker_line.endswith(" 3")
    assert f'site-worker="{(tmp_path / "st" / "worker.sock").resolve()}"' in node_line
    assert not (tmp_path / "st").exists() or not (tmp_path / "st" / "worker.sock").exists()  # nothing started


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    from fedmedlora import deploy

    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    script += "print('ready', flush=True); time.sleep(300)"
    proc = deploy.start_process("sleeper", [sys.executable, "-c", script], state_dir=tmp_path)
    proc.wait_for_log("ready", 60)
    _wait_until(lambda: len(deploy.group_processes(proc.pid)) == 2, 30, "the grandchild")
    assert (tmp_path / "sleeper.pid").read_text().strip() == str(proc.pid)
    with pytest.raises(deploy.DeployError, match="already running"):
        deploy.start_process("sleeper", [sys.executable, "-c", "pass"], state_dir=tmp_path)
    assert deploy.stop_recorded(tmp_path) == ["sleeper"]
    _wait_until(lambda: not deploy.group_processes(proc.pid), 30, "the group to end")
    assert not (tmp_path / "sleeper.pid").exists()
    proc.popen.wait(timeout=10)


# ---- tests on a real deployment --------------------------------------------------------------------------------


@pytest.mark.slow
def test_unregistered_hospital_key_is_refused(deployment: Deployment) -> None:
    before = deployment.status_of_nodes()
    private, _ = deployment.d.generate_node_key(deployment.root / "keys", "intruder")  # public key never registered
    intruder = deployment.start_node("alpha", name="intruder", key=private)  # valid TLS and data, unknown key
    rc = intruder.wait(timeout=START_TIMEOUT)
    assert rc != 0
    assert deployment.d.UNREGISTERED_KEY_MARKER in intruder.log_text()
    assert "Exit Code: 305" in intruder.log_text()
    after = deployment.status_of_nodes()
    assert set(after) == set(before) == set(deployment.node_ids.values())  # no new node appeared


@pytest.mark.slow
def test_two_rounds_over_tls_match_the_simulation(deployment: Deployment, world: Path, tmp_path: Path) -> None:
    from fedmedlora.federation.simulation import run_federation

    cfg = _cfg(world)
    run_dir = tmp_path / "run"
    run_id = deployment.submit(cfg, run_dir)
    status = deployment.wait(run_id)
    assert status["status"] == "finished:completed", (status, deployment.logs(run_id)[-4000:])

    rounds = _rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert r["sites"] == SITES and not r["failures"]
        assert sorted(r["node_ids"]) == sorted(deployment.node_ids[s] for s in SITES)
    comm = [json.loads(x) for x in (run_dir / "comm.jsonl").read_text().splitlines()]
    assert len(comm) == 12 and {c["site"] for c in comm} == set(SITES)
    assert all("lora_" in t["name"] for c in comm for t in c["tensors"])  # only adapter tensors travelled

    sim = run_federation(cfg, tmp_path / "sim", data_dir=world / "bench", sites=SITES)
    _assert_same_adapter(_final(run_dir), sim.arrays)
    for a, b in zip(rounds, sim.rounds, strict=True):
        for key in ("sites", "weights", "sizes", "train_loss", "val_loss"):
            assert a.get(key) == pytest.approx(b.get(key), abs=1e-5), key


@pytest.mark.slow
def test_hospital_down_during_a_round_then_back(deployment: Deployment, world: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "outage"
    run_id = deployment.submit(_cfg(world, min_sites=2), run_dir)
    gamma = deployment.nodes["gamma"]

    def gamma_is_training():
        return any("flwr-clientapp" in cmd for _, cmd in deployment.d.group_processes(gamma.pid))

    _wait_until(gamma_is_training, START_TIMEOUT * 3, "gamma's ClientApp to start round 1")
    gamma.stop()  # the hospital's node goes down in the middle of its local training

    status = deployment.wait(run_id)
    assert status["status"] == "finished:completed", (status, deployment.logs(run_id)[-4000:])
    rounds = _rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["sites"] == ["alpha", "beta"] and rounds[1]["failures"], rounds[1]
    assert any(f.startswith("gamma: no valid reply") for f in rounds[1]["failures"]), rounds[1]["failures"]
    assert rounds[2]["sites"] == ["alpha", "beta"]
    assert "failed" in deployment.logs(run_id)

    deployment.start_node("gamma")  # back with the same key -> same node id
    deployment.wait_online()
    assert deployment.status_of_nodes()[deployment.node_ids["gamma"]] == "online"


@pytest.mark.slow
def test_coordinator_crash_after_round_1_resumes(deployment: Deployment, world: Path, tmp_path: Path) -> None:
    d = deployment.d
    cfg = _cfg(world)
    deployment.wait_online()  # the previous test brought gamma back
    run_dir = tmp_path / "crash"
    first = deployment.submit(cfg, run_dir)

    def round_1_checkpointed() -> bool:
        state = run_dir / "federation_state.json"
        return state.is_file() and json.loads(state.read_text() or "{}").get("round") == 1

    _wait_until(round_1_checkpointed, RUN_TIMEOUT, "the round-1 checkpoint")
    deployment.superlink.kill()  # the coordinator machine dies: SuperLink, SuperExec and the ServerApp at once
    deployment.start_superlink()  # same port, same --database: registrations and nodes survive
    deployment.wait_online()
    old = deployment.wait(first, timeout=300)
    assert old["status"] == "finished:failed"
    assert [r["round"] for r in _rounds(run_dir)] == [0, 1]

    status = d.supervise_run(
        run_dir.parent / f"{run_dir.name}_app",
        CONNECTION,
        flwr_home=deployment.operator_home,
        run_dir=run_dir,
        timeout=RUN_TIMEOUT,
        resume=True,
        max_restarts=0,
    )
    assert status["status"] == "finished:completed", status
    rounds = _rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]  # each round recorded exactly once
    assert all(r["sites"] == SITES for r in rounds[1:])

    from fedmedlora.federation.simulation import run_federation

    uninterrupted = run_federation(cfg, tmp_path / "sim", data_dir=world / "bench", sites=SITES)
    _assert_same_adapter(_final(run_dir), uninterrupted.arrays)


@pytest.mark.slow
def test_dpsgd_with_secure_aggregation_over_tls_matches_the_simulation(
    deployment: Deployment, world: Path, tmp_path: Path
) -> None:
    """DP-SGD at every SuperNode and SecAgg+ between them on the Deployment Engine: the same ε as the simulation,
    the same adapter within SecAgg+'s quantisation, and no tensor from a site reaches the coordinator."""
    from fedmedlora.config import load_config
    from fedmedlora.federation.simulation import run_federation

    base = _cfg(world, rounds=1)
    cfg = load_config(
        overrides=[
            "train.dp.noise_multiplier=2.0",
            "train.dp.reproducible_noise=true",  # the same noise as the simulation, for the comparison only
            "federation.secure_aggregation=true",
        ],
        **base.model_dump(mode="json"),
    )
    run_dir = tmp_path / "run"
    run_id = deployment.submit(cfg, run_dir)
    status = deployment.wait(run_id)
    assert status["status"] == "finished:completed", (status, deployment.logs(run_id)[-4000:])
    rounds = _rounds(run_dir)
    r = rounds[1]
    assert r["sites"] == SITES and not r["failures"]
    assert r["privacy"]["secure_aggregation"] == {"sites": SITES, "dropped": []}
    comm = [json.loads(x) for x in (run_dir / "comm.jsonl").read_text().splitlines()]
    assert [c for c in comm if c["direction"] == "up" and c["tensors"]] == []

    sim = run_federation(cfg, tmp_path / "sim", data_dir=world / "bench", sites=SITES)
    assert r["privacy"]["sites"] == pytest.approx(sim.rounds[1]["privacy"]["sites"], rel=1e-9)
    final, expected = _final(run_dir), sim.arrays
    assert max(float(np.abs(final[k] - expected[k]).max()) for k in final) < 2e-4


def _with(cfg, *overrides: str):
    from fedmedlora.config import load_config

    return load_config(overrides=list(overrides), **cfg.model_dump(mode="json"))


def _clientapp_running(deployment: Deployment, site: str) -> bool:
    return any("flwr-clientapp" in cmd for _, cmd in deployment.d.group_processes(deployment.nodes[site].pid))


@pytest.mark.slow
def test_fedsa_survives_supernodes_sigkilled_mid_round_and_between_rounds(
    deployment: Deployment, world: Path, tmp_path: Path
) -> None:
    """gamma's machine dies while it trains round 1, beta's right after round 1; both are restarted at once and
    retried until Flower lets them back in (it refuses until their heartbeats lapse). The coordinator gets "Node
    Unavailable" for each, waits for it to rejoin, sends the round again, and each site resumes from its durable
    state: the final FedSA adapter equals the uninterrupted run's."""
    from fedmedlora.federation.simulation import run_federation

    deployment.wait_online()
    cfg = _with(_cfg(world, rounds=3, rejoin=300), "federation.strategy=fedsa")
    run_dir = tmp_path / "killed"
    run_id = deployment.submit(cfg, run_dir)

    _wait_until(lambda: _clientapp_running(deployment, "gamma"), START_TIMEOUT * 3, "gamma training round 1")
    deployment.nodes["gamma"].kill()
    deployment.restart_node("gamma")  # refused until the SuperLink marks the dead one offline, then back

    def round_1_done() -> bool:
        state = run_dir / "federation_state.json"
        return state.is_file() and json.loads(state.read_text() or "{}").get("round", 0) >= 1

    _wait_until(round_1_done, RUN_TIMEOUT, "round 1")
    deployment.nodes["beta"].kill()
    deployment.restart_node("beta")

    status = deployment.wait(run_id)
    logs = deployment.logs(run_id)
    assert status["status"] == "finished:completed", (status, logs[-4000:])
    rounds = _rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["sites"] == SITES and not r["failures"] for r in rounds[1:]), rounds
    assert "gamma is back online: sent it the train again" in logs, logs[-4000:]
    assert "beta is back online: sent it the train again" in logs, logs[-4000:]
    uninterrupted = run_federation(cfg, tmp_path / "sim", data_dir=world / "bench", sites=SITES)
    _assert_same_adapter(_final(run_dir), uninterrupted.arrays)


@pytest.mark.slow
def test_a_scaled_and_a_nan_site_are_excluded_by_name_and_the_honest_site_is_the_aggregate(
    world: Path, tmp_path: Path
) -> None:
    """Over TLS with node auth: beta's worker multiplies its upload by 1e6, gamma's puts a NaN in it. Both are
    excluded and named in every round, the run finishes, and the global adapter is alpha's alone (the simulation
    of alpha by itself)."""
    from fedmedlora import deploy
    from fedmedlora.federation.simulation import run_federation

    root = tmp_path / "dep"
    hostile = {"beta": "scale", "gamma": "nan"}
    socks = {site: root / "hostile" / f"{site}.sock" for site in hostile}
    workers = []
    for site, kind in hostile.items():
        args = [sys.executable, str(Path(__file__).parent.parent / "hostile_worker.py"), str(socks[site]), kind]
        proc = deploy.start_process(f"site-worker-{site}", args, state_dir=root / "pids")
        workers.append(proc)

    class WithHostileSites(Deployment):
        def start_node(self, site: str, **kw):
            if site in socks and "key" not in kw:
                kw["extra_node_config"] = {"site-worker": str(socks[site])}
            return super().start_node(site, **kw)

    dep = WithHostileSites(root, world / "bench")
    try:
        for proc in workers:
            proc.wait_for_log(r"site worker listening on", START_TIMEOUT)
        dep.up()
        cfg = _with(_cfg(world, min_sites=1), "federation.max_update_norm=1000")
        run_id = dep.submit(cfg, tmp_path / "run")
        status = dep.wait(run_id)
        assert status["status"] == "finished:completed", (status, dep.logs(run_id)[-4000:])
    finally:
        dep.down()
    rounds = _rounds(tmp_path / "run")
    for r in rounds[1:]:
        assert r["sites"] == ["alpha"], r
        assert "max_update_norm=1000" in r["excluded"]["beta"], r["excluded"]
        assert "NaN" in r["excluded"]["gamma"], r["excluded"]
    alone = _with(cfg, "federation.sites=[alpha]")
    sim = run_federation(alone, tmp_path / "sim", data_dir=world / "bench", sites=["alpha"])
    _assert_same_adapter(_final(tmp_path / "run"), sim.arrays)


@pytest.fixture(scope="module")
def resident(world: Path, tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("resident"), world / "bench", resident_model=True)
    try:
        dep.up()
        yield dep
    finally:
        dep.down()


@pytest.mark.slow
def test_resident_site_workers_give_the_simulation_result(resident: Deployment, world: Path, tmp_path: Path) -> None:
    """With ``--resident-model`` every round's ClientApp forwards to the site's long-lived worker: same adapter as
    the simulation, and each worker (not a fresh ClientApp process) did every site's training."""
    from fedmedlora.federation.simulation import run_federation

    cfg = _with(_cfg(world), "federation.strategy=fedsa")
    run_dir = tmp_path / "run"
    run_id = resident.submit(cfg, run_dir)
    status = resident.wait(run_id)
    assert status["status"] == "finished:completed", (status, resident.logs(run_id)[-4000:])
    assert all(r["sites"] == SITES for r in _rounds(run_dir)[1:])
    for site in SITES:
        log_text = resident.workers[site].log_text()
        assert log_text.count("site worker: train handled") == 2, (site, log_text[-2000:])
        assert (resident.state_dir(site) / "worker.sock").is_socket()
    sim = run_federation(cfg, tmp_path / "sim", data_dir=world / "bench", sites=SITES)
    _assert_same_adapter(_final(run_dir), sim.arrays)


def test_connection_address_is_checked_and_a_failed_call_leaves_the_file(tmp_path: Path) -> None:
    from fedmedlora import deploy

    home = tmp_path / "home"
    path = deploy.write_connection(home, "h", "127.0.0.1:9093", insecure=True)
    before = path.read_text()
    for bad in ('evil"]\nx = "1:1', "not an address", "", ":99999", "host:0", "host:port"):
        with pytest.raises(deploy.DeployError, match="address"):
            deploy.write_connection(home, "h2", bad, insecure=True)
        assert path.read_text() == before
    deploy.write_connection(home, "v6", "[::1]:9093", insecure=True)
    assert (home / "config.toml.bak").read_text() == before
    path.write_text("[superlink\nbroken", encoding="utf-8")
    with pytest.raises(deploy.DeployError, match="not valid TOML"):
        deploy.write_connection(home, "h3", "127.0.0.1:1", insecure=True)
    assert path.read_text() == "[superlink\nbroken"


def _trusted_entities_file(root: Path) -> Path:
    """A valid ``--trusted-entities`` YAML: one Ed25519 key (made with ssh-keygen) under a Flower key id."""
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    key = root / "release_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "coordinator-release-key", "-f", str(key)], check=True
    )
    path = root / "trusted-entities.yaml"
    public = (root / "release_ed25519.pub").read_text().strip()
    path.write_text(f'fpk_00000000-0000-0000-0000-000000000001: "{public}"\n', encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_node_with_trusted_entities_refuses_the_unsigned_app_and_the_round_goes_on(
    world: Path, tmp_path: Path
) -> None:
    """gamma's SuperNode only runs apps signed by a key in its allow-list. The coordinator's app is built and
    submitted locally, unsigned (a self-hosted SuperLink has no app verification in Flower 1.41), so gamma refuses
    it in every round and never starts a ClientApp; the coordinator records gamma's refusal by name and the run
    finishes with alpha and beta."""
    trusted = _trusted_entities_file(tmp_path / "release")

    class GammaTrustsOnlySignedApps(Deployment):
        def start_node(self, site: str, **kw):
            if site == "gamma" and "key" not in kw:
                kw["trusted_entities"] = trusted
            return super().start_node(site, **kw)

    dep = GammaTrustsOnlySignedApps(tmp_path / "dep", world / "bench")
    try:
        dep.up()
        run_dir = tmp_path / "run"
        run_id = dep.submit(_cfg(world, rounds=1, min_sites=2), run_dir)
        status = dep.wait(run_id, timeout=RUN_TIMEOUT)
        assert status["status"] == "finished:completed", (status, dep.logs(run_id)[-4000:])
        gamma_log = dep.nodes["gamma"].log_text()
    finally:
        dep.down()
    assert "The FAB could not be verified" in gamma_log or "FAB verification failed" in gamma_log, gamma_log[-3000:]
    # gamma never ran the app: no ClientApp saved a site state there, while the sites that trained did
    assert not list(dep.state_dir("gamma").rglob("round_*.pb"))
    assert list(dep.state_dir("alpha").rglob("round_*.pb"))
    rounds = _rounds(run_dir)
    assert rounds[1]["sites"] == ["alpha", "beta"], rounds[1]
    assert any(f.startswith("gamma") and "could not be verified" in f for f in rounds[1]["failures"]), rounds[1]
