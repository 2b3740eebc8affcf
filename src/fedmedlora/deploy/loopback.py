"""A whole deployment on one machine: a TLS SuperLink with node authentication and one SuperNode per site.

For trying the Deployment Engine before the hospitals join, for the deployment tests and for the deployment
benchmarks (``bench/deployment_round.py``). Each process is its own process group with its own ``FLWR_HOME``, as
on separate machines; everything listens on 127.0.0.1 only. ``LoopbackDeployment.down`` stops them by their
recorded process groups, never by name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmedlora.deploy.app_dir import app_config, write_app_dir
from fedmedlora.deploy.commands import (
    SITE_WORKER_NODE_KEY,
    start_site_worker,
    superlink_command,
    supernode_command,
    write_connection,
)
from fedmedlora.deploy.control import register_node, run_logs, submit_run, wait_for_nodes, wait_for_run
from fedmedlora.deploy.pki import generate_certs, generate_node_key
from fedmedlora.deploy.processes import ManagedProcess, start_process, stop_recorded
from fedmedlora.deploy.tools import DeployError, flower_env, free_port

CONNECTION = "loopback"


class LoopbackDeployment:
    """One coordinator (SuperLink, TLS + node auth, on-disk state) and one SuperNode per site, on loopback.

    Args:
        root: working folder (certificates, keys, Flower homes, logs and PIDs under ``root/pids``).
        data_dir: the benchmark folder holding ``<site>/`` for every site (the coordinator's validation set too).
        sites: site names; each gets a registered key and a SuperNode.
        resident_model: also start a resident site worker per site (``deploy supernode --resident-model``).
        worker_threads: torch threads of every site process, resident worker or ClientApp (``OMP_NUM_THREADS``);
            0 leaves torch's default. Several sites on one machine oversubscribe its cores unless this is set.
        start_timeout: seconds for a process to come up and for the nodes to be online.
        superlink_state: ``"file"`` (default): the SuperLink keeps its state in ``root/superlink.db`` (SQLite), so
            it survives a SuperLink restart and a run can be resumed; ``"memory"``: Flower's in-memory state,
            lost with the SuperLink process, which avoids SQLite's writer lock when many SuperNodes push replies at
            once (Flower 1.41 answers a locked push with HTTP 500 and the SuperNode does not retry it).
    """

    def __init__(
        self,
        root: str | Path,
        data_dir: str | Path,
        sites: Sequence[str],
        *,
        resident_model: bool = False,
        worker_threads: int = 0,
        start_timeout: float = 120.0,
        superlink_state: str = "file",
    ) -> None:
        if superlink_state not in ("file", "memory"):
            raise DeployError(f"superlink_state={superlink_state!r}: expected 'file' or 'memory'")
        self.superlink_state = superlink_state
        self.root = Path(root).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.sites = list(sites)
        self.resident_model = resident_model
        self.worker_threads = worker_threads
        self.start_timeout = start_timeout
        self.state = self.root / "pids"
        self.operator_home = self.root / "home" / "operator"
        self.tls = generate_certs(self.root / "certs", bits=2048)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.superlink: ManagedProcess | None = None
        self.nodes: dict[str, ManagedProcess] = {}
        self.workers: dict[str, ManagedProcess] = {}
        self.node_ids: dict[str, int] = {}

    # ---- processes --------------------------------------------------------------------------------------------

    def _env(self, home: str) -> dict[str, str]:
        env = flower_env(self.root / "home" / home)
        if self.worker_threads > 0:
            env.update(OMP_NUM_THREADS=str(self.worker_threads), MKL_NUM_THREADS=str(self.worker_threads))
        return env

    def start_superlink(self) -> None:
        database = self.root / "superlink.db" if self.superlink_state == "file" else None
        args = superlink_command(tls=self.tls, port=self.port, database=database)
        self.superlink = start_process(
            "superlink", args, state_dir=self.state, env=flower_env(self.root / "home" / "superlink"), cwd=self.root
        )
        self.superlink.wait_for_log(r"Uvicorn running on https://", self.start_timeout)

    def key(self, site: str) -> tuple[Path, Path]:
        """``(private, public)`` key of ``site`` (created once)."""
        return generate_node_key(self.root / "keys", site)

    def state_dir(self, site: str) -> Path:
        return self.root / "site-state" / site

    def start_worker(self, site: str) -> ManagedProcess:
        sock = self.state_dir(site) / "worker.sock"
        proc = start_site_worker(
            site,
            sock,
            state_dir=self.state,
            threads=self.worker_threads,
            env=self._env(f"site-worker-{site}"),
            timeout=self.start_timeout,
        )
        self.workers[site] = proc
        return proc

    def start_node(
        self,
        site: str,
        *,
        name: str | None = None,
        key: Path | None = None,
        extra_node_config: Mapping[str, str | int | float | bool] | None = None,
        trusted_entities: str | Path | None = None,
    ) -> ManagedProcess:
        """Start ``site``'s SuperNode (a ``key`` of someone else, or a ``name``, starts an extra node for tests)."""
        node_config: dict[str, str | int | float | bool] = {"state-dir": str(self.state_dir(site))}
        if self.resident_model and key is None:
            if site not in self.workers or not self.workers[site].alive:
                self.start_worker(site)
            node_config[SITE_WORKER_NODE_KEY] = str(self.state_dir(site) / "worker.sock")
        node_config.update(extra_node_config or {})
        args = supernode_command(
            superlink=self.address,
            site=site,
            data_dir=self.data_dir,
            private_key=key or self.key(site)[0],
            root_certificates=self.tls.ca_cert,
            port=free_port(),
            extra_node_config=node_config,
            trusted_entities=trusted_entities,
        )
        name = name or f"supernode-{site}"
        proc = start_process(name, args, state_dir=self.state, env=self._env(name), cwd=self.root)
        if key is None:
            self.nodes[site] = proc
        return proc

    def restart_node(self, site: str, *, timeout: float | None = None, retry_s: float = 3.0) -> ManagedProcess:
        """Start ``site``'s SuperNode again after a crash, retrying as systemd's ``Restart=always`` would.

        Flower 1.41 refuses to activate a node whose previous process died until the SuperLink has marked it
        offline (two missed heartbeats, about 60 s): the new process exits with "Exit Code: 305 ... Failed to
        activate SuperNode". Each failed attempt's process group (its ``flower-superexec`` outlives it) is stopped
        before the next. Returns the process once its log shows the node activated.

        Raises:
            DeployError: the node did not activate within ``timeout`` (default 3 × ``start_timeout``).
        """
        deadline = time.monotonic() + (timeout if timeout is not None else 3 * self.start_timeout)
        attempts = 0
        while True:
            attempts += 1
            proc = self.start_node(site)
            while proc.alive() and "SuperNode ID:" not in proc.log_text():
                time.sleep(0.25)
            if "SuperNode ID:" in proc.log_text() and proc.alive():
                return proc
            proc.stop(timeout=5)  # reaps the superexec the failed attempt left behind
            if time.monotonic() > deadline:
                raise DeployError(
                    f"supernode-{site} did not activate in {attempts} attempts:\n{proc.log_text()[-2000:]}"
                )
            time.sleep(retry_s)

    def up(self) -> LoopbackDeployment:
        """Start the SuperLink, register every site's key, start every SuperNode, and wait until all are online."""
        self.start_superlink()
        write_connection(self.operator_home, CONNECTION, self.address, root_certificates=self.tls.ca_cert)
        for site in self.sites:
            self.node_ids[site] = register_node(self.key(site)[1], CONNECTION, flwr_home=self.operator_home, name=site)
            self.start_node(site)
        self.wait_online()
        return self

    def wait_online(self, sites: Sequence[str] | None = None) -> None:
        wait_for_nodes(
            CONNECTION,
            [self.node_ids[s] for s in (sites or self.sites)],
            flwr_home=self.operator_home,
            timeout=self.start_timeout,
        )

    def down(self) -> list[str]:
        """Stop every process this deployment started."""
        return stop_recorded(self.state)

    def __enter__(self) -> LoopbackDeployment:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.down()

    # ---- runs -------------------------------------------------------------------------------------------------

    def submit(self, cfg: Any, run_dir: str | Path, *, resume: bool = False) -> int:
        """Submit a federation of ``cfg`` (a ``RunConfig``) writing its run folder to ``run_dir``; the run id."""
        run_dir = Path(run_dir)
        app = write_app_dir(
            run_dir.parent / f"{run_dir.name}_app", app_config(cfg, run_dir=run_dir, server_data_dir=self.data_dir)
        )
        return submit_run(app, CONNECTION, flwr_home=self.operator_home, overrides={"resume": True} if resume else None)

    def wait(self, run_id: int, timeout: float = 900.0) -> dict[str, Any]:
        return wait_for_run(run_id, CONNECTION, flwr_home=self.operator_home, timeout=timeout)

    def logs(self, run_id: int) -> str:
        return run_logs(run_id, CONNECTION, flwr_home=self.operator_home)

    def run(self, cfg: Any, run_dir: str | Path, *, timeout: float = 900.0) -> dict[str, Any]:
        """Submit and wait; raise with the run's log when it does not finish completed."""
        run_id = self.submit(cfg, run_dir)
        status = self.wait(run_id, timeout=timeout)
        if status.get("status") != "finished:completed":
            raise DeployError(f"run {run_id} ended {status.get('status')}:\n{self.logs(run_id)[-4000:]}")
        return status
