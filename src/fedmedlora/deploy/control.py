"""The SuperLink's Control API, driven through the ``flwr`` command-line tool.

Owns: running ``flwr <args>`` with a given ``FLWR_HOME`` and reading its ``--format json`` answers, registering
and listing SuperNodes (``flwr supernode register|list``), waiting for nodes to come online, and submitting /
watching / stopping runs and reading their logs (``flwr run|list|stop|log``). ``flwr run`` exits 0 even when
the run fails, so a run's outcome is always read from ``flwr list <run-id>`` (``run_status``).

(Not named ``flwr_cli.py``: that module name would be shadowed by the ``flwr_cli`` function the package
re-exports, so ``fedmedlora.deploy.flwr_cli`` would not resolve to the module.)
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmedlora.deploy.tools import DeployError, _tool, flower_env

FINISHED = "finished"


def flwr_cli(
    args: Sequence[str], *, flwr_home: str | Path, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``flwr <args>`` with ``FLWR_HOME=flwr_home``.

    Raises:
        DeployError: non-zero exit (when ``check``) or timeout.
    """
    cmd = [_tool("flwr"), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=flower_env(flwr_home), check=False
        )
    except subprocess.TimeoutExpired:
        raise DeployError(f"`flwr {' '.join(args)}` did not finish in {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        raise DeployError(f"`flwr {' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _flwr_json(args: Sequence[str], *, flwr_home: str | Path, timeout: float = 120.0) -> dict[str, Any]:
    proc = flwr_cli([*args, "--format", "json"], flwr_home=flwr_home, timeout=timeout)
    out = proc.stdout
    start = out.find("{")
    try:
        data = json.loads(out[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise DeployError(f"`flwr {' '.join(args)}`: expected JSON, got: {(out + proc.stderr).strip()[-1000:]}")
    if not data.get("success", False):
        msg = str(data.get("error-message", data)).strip()
        raise DeployError(f"`flwr {' '.join(args)}` failed: {msg[-1500:]}")
    return data


def register_node(public_key: str | Path, connection: str, *, flwr_home: str | Path, name: str | None = None) -> int:
    """Register a hospital's public key with the SuperLink (``flwr supernode register``); returns its node id."""
    if not Path(public_key).is_file():
        raise DeployError(f"public key {public_key} does not exist")
    args = ["supernode", "register", str(public_key), connection]
    if name:
        args += ["--name", name]
    data = _flwr_json(args, flwr_home=flwr_home)
    node_id = data.get("node-id")
    if node_id is None:
        raise DeployError(f"`flwr supernode register` returned no node id: {data}")
    return int(node_id)


def list_nodes(connection: str, *, flwr_home: str | Path) -> list[dict[str, Any]]:
    """``flwr supernode list``: one dict per node (``node-id``, ``status`` = registered/online/offline, ...)."""
    return list(_flwr_json(["supernode", "list", connection], flwr_home=flwr_home).get("nodes", []))


def wait_for_nodes(
    connection: str, node_ids: Sequence[int], *, flwr_home: str | Path, timeout: float, poll: float = 2.0
) -> None:
    """Wait until every node in ``node_ids`` is ``online`` (``DeployError`` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    want = {int(n) for n in node_ids}
    status: dict[int, Any] = {}
    while True:
        try:
            status = {int(n["node-id"]): n.get("status") for n in list_nodes(connection, flwr_home=flwr_home)}
        except DeployError as e:  # the SuperLink may be (re)starting
            status = {"error": str(e)[-300:]}  # type: ignore[dict-item]
        missing = sorted(n for n in want if status.get(n) != "online")
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DeployError(f"nodes {missing} not online after {timeout:.0f} s (status: {status})")
        time.sleep(poll)


def submit_run(
    app_dir: str | Path,
    connection: str,
    *,
    flwr_home: str | Path,
    overrides: Mapping[str, Any] | None = None,
) -> int:
    """``flwr run <app_dir> <connection>`` (no streaming); returns the run id.

    ``overrides`` become ``--run-config`` entries (keys must exist in the app's config).
    """
    args = ["run", str(app_dir), connection]
    for k, v in (overrides or {}).items():
        args += ["--run-config", f"{k}={_toml_value(v)}"]
    data = _flwr_json(args, flwr_home=flwr_home)
    return int(data["run-id"])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def run_status(run_id: int, connection: str, *, flwr_home: str | Path) -> dict[str, Any]:
    """``flwr list <run-id>``: the run's dict (``status`` such as ``running``, ``finished:completed``,
    ``finished:failed``, ``finished:stopped``; ``status-details``)."""
    runs = _flwr_json(["list", "--run-id", str(run_id), connection], flwr_home=flwr_home).get("runs", [])
    for r in runs:
        if int(r.get("run-id", -1)) == int(run_id):
            return dict(r)
    raise DeployError(f"run {run_id} not known to connection {connection}")


def wait_for_run(
    run_id: int, connection: str, *, flwr_home: str | Path, timeout: float, poll: float = 3.0
) -> dict[str, Any]:
    """Poll until the run has finished (any outcome) and return its status dict.

    Raises:
        DeployError: still not finished after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        st = run_status(run_id, connection, flwr_home=flwr_home)
        if str(st.get("status", "")).startswith(FINISHED):
            return st
        if time.monotonic() > deadline:
            raise DeployError(f"run {run_id} still {st.get('status')} after {timeout:.0f} s")
        time.sleep(poll)


def stop_run(run_id: int, connection: str, *, flwr_home: str | Path) -> None:
    """``flwr stop <run-id>``: the SuperLink ends the ServerApp and marks the run ``finished:stopped``."""
    flwr_cli(["stop", str(run_id), connection], flwr_home=flwr_home)


def run_logs(run_id: int, connection: str, *, flwr_home: str | Path, timeout: float = 60.0) -> str:
    """The ServerApp's log of a run as the SuperLink stored it (``flwr log --show``)."""
    proc = flwr_cli(["log", str(run_id), connection, "--show"], flwr_home=flwr_home, timeout=timeout, check=False)
    return proc.stdout + proc.stderr
