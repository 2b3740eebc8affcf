"""Real multi-hospital deployment on Flower's Deployment Engine: TLS material, node keys, processes, runs.

Owns: the self-signed test CA and SuperLink certificate (``openssl``), per-hospital ECDSA keys for SuperNode
authentication (``ssh-keygen``), the ``$FLWR_HOME/config.toml`` connection section the ``flwr`` CLI uses, the
exact ``flower-superlink`` / ``flower-supernode`` command lines, starting and stopping them as subprocesses with
recorded PIDs (each in its own process group, so a stop also ends its ``flower-superexec`` and app children),
the small "run app" folder submitted with ``flwr run`` (a ``pyproject.toml`` whose ``[tool.flwr.app.config]``
holds the whole resolved run configuration), and submitting / watching / stopping runs through the ``flwr`` CLI.

Verified on flwr 1.41.0 (see deploy/README.md): the SuperLink serves the Fleet, Control and Runtime APIs over
HTTPS on one ``--host/--port``; ``flwr run --run-config`` only accepts keys declared in the app's
``pyproject.toml``; ``root-certificates`` in ``config.toml`` must be an absolute path; an unregistered SuperNode
key is refused ("Exit Code: 305 ... Failed to activate SuperNode", process exit status non-zero); ``flwr run``
exits 0 even when the run fails, so the run status must be read with ``flwr list <run-id>``.

Must not import torch, transformers, peft or flwr: Flower is driven through its command-line tools only, so this
module (and ``fedmedlora deploy ...``) works on a coordinator or hospital machine and in tests without loading
the Flower runtime into the calling process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SUPERLINK_PORT = 9092
DEFAULT_SUPERNODE_PORT = 9094
APP_PUBLISHER = "fedmedlora"
SERVER_APP = "fedmedlora.federation.server_app:app"
CLIENT_APP = "fedmedlora.federation.client_app:app"
FINISHED = "finished"
UNREGISTERED_KEY_MARKER = "Failed to activate SuperNode"


class DeployError(RuntimeError):
    """A deployment step failed; the message names the command, file or run and says what to check."""


# ---- environment -----------------------------------------------------------------------------------------------


def venv_bin() -> Path:
    """The folder holding this interpreter's console scripts (``flower-superlink``, ``flwr``, ...)."""
    return Path(sys.executable).parent


def flower_env(flwr_home: str | Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: this venv's ``bin`` first on PATH (the SuperLink and SuperNode start
    ``flower-superexec`` / ``flwr-serverapp`` / ``flwr-clientapp`` by name) and ``FLWR_HOME`` if given."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if flwr_home is not None:
        Path(flwr_home).mkdir(parents=True, exist_ok=True)
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    return env


def _tool(name: str) -> str:
    for cand in (venv_bin() / name, shutil.which(name)):
        if cand and Path(cand).is_file():
            return str(cand)
    raise DeployError(f"{name} not found (looked in {venv_bin()} and on PATH); is flwr[simulation] installed?")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (tests; there is an unavoidable small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- TLS material and node keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """The files of a (test) certificate authority and the SuperLink certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, folder: str | Path) -> TLSFiles:
        d = Path(folder)
        return cls(d / "ca.crt", d / "ca.key", d / "server.pem", d / "server.key")

    def check(self, *, server: bool = True) -> None:
        """Raise ``DeployError`` naming the first missing file."""
        needed = [self.ca_cert, self.server_cert, self.server_key] if server else [self.ca_cert]
        for p in needed:
            if not p.is_file():
                raise DeployError(f"TLS file {p} does not exist (run `fedmedlora deploy certs` or deploy/gen_certs.sh)")


def _run_tool(args: Sequence[str], what: str, timeout: float = 120.0) -> None:
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise DeployError(f"{what}: {args[0]} not found on PATH") from None
    if proc.returncode != 0:
        raise DeployError(f"{what} failed ({' '.join(args[:3])} ...): {proc.stderr.strip() or proc.stdout.strip()}")


def generate_certs(out_dir: str | Path, *, sans: Sequence[str] = (), days: int = 365, bits: int = 4096) -> TLSFiles:
    """Create a self-signed CA and a SuperLink certificate signed by it (FOR TEST DEPLOYMENTS).

    Same result as ``deploy/gen_certs.sh``. The certificate's subjectAltName always holds ``localhost``,
    ``127.0.0.1`` and ``::1``.

    Args:
        out_dir: Folder for ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` (created).
        sans: Extra subjectAltName entries such as ``DNS:coordinator.example.org`` or ``IP:10.0.0.5``.
        days: Validity.
        bits: RSA key size (tests may use 2048 to save time).

    Returns:
        The paths written.

    Raises:
        DeployError: openssl missing or failing, or a malformed SAN entry.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = TLSFiles.in_dir(out)
    san = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    for s in sans:
        if not re.fullmatch(r"(DNS|IP):[A-Za-z0-9.:*-]+", s):
            raise DeployError(f"subjectAltName entry {s!r}: expected DNS:<name> or IP:<address>")
        san.append(s)
    subj = "/O=fedmedlora test deployment"
    ssl = "openssl"
    _run_tool([ssl, "genrsa", "-out", str(files.ca_key), str(bits)], "CA key")
    _run_tool(
        [ssl, "req", "-x509", "-new", "-nodes", "-key", str(files.ca_key), "-sha256", "-days", str(days),
         "-subj", f"{subj}/CN=fedmedlora test CA", "-out", str(files.ca_cert)],
        "CA certificate",
    )  # fmt: skip
    _run_tool([ssl, "genrsa", "-out", str(files.server_key), str(bits)], "SuperLink key")
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "server.csr", Path(tmp) / "ext.cnf"
        ext.write_text(
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n"
            f"extendedKeyUsage = serverAuth\nsubjectAltName = {','.join(san)}\n",
            encoding="utf-8",
        )
        _run_tool(
            [ssl, "req", "-new", "-key", str(files.server_key), "-subj", f"{subj}/CN=localhost", "-out", str(csr)],
            "SuperLink certificate request",
        )
        _run_tool(
            [ssl, "x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
             "-CAcreateserial", "-CAserial", str(Path(tmp) / "ca.srl"), "-out", str(files.server_cert),
             "-days", str(days), "-sha256", "-extfile", str(ext)],
            "SuperLink certificate",
        )  # fmt: skip
    files.ca_key.chmod(0o600)
    files.server_key.chmod(0o600)
    return files


def generate_node_key(out_dir: str | Path, site: str) -> tuple[Path, Path]:
    """Create the ECDSA P-384 key pair a hospital's SuperNode authenticates with (``<site>``, ``<site>.pub``).

    An existing key is kept (never overwritten). Same as ``deploy/gen_node_keys.sh``.

    Raises:
        DeployError: a site name that is not a plain file name, or ssh-keygen missing / failing.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", site) or site.startswith("."):
        raise DeployError(f"site name {site!r}: use letters, digits, '_', '.', '-'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / site, out / f"{site}.pub"
    if not private.exists():
        _run_tool(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", f"fedmedlora-supernode-{site}",
             "-f", str(private)],
            f"node key for {site}",
        )  # fmt: skip
    if not public.is_file():
        raise DeployError(f"{private} exists but its public key {public} is missing")
    return private, public


# ---- the flwr CLI's connection configuration -------------------------------------------------------------------


def connection_toml(
    name: str, address: str, *, root_certificates: str | Path | None = None, insecure: bool = False
) -> str:
    """The ``[superlink.<name>]`` section of ``$FLWR_HOME/config.toml`` (root certificate made absolute)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise DeployError(f"connection name {name!r}: use letters, digits, '_', '-'")
    lines = [f"[superlink.{name}]", f'address = "{address}"']
    if insecure:
        lines.append("insecure = true")
    elif root_certificates is not None:
        ca = Path(root_certificates).resolve()
        if not ca.is_file():
            raise DeployError(f"root certificate {ca} does not exist")
        lines.append(f'root-certificates = "{ca}"')
    return "\n".join(lines) + "\n"


def write_connection(
    flwr_home: str | Path,
    name: str,
    address: str,
    *,
    root_certificates: str | Path | None = None,
    insecure: bool = False,
) -> Path:
    """Add (or replace) the connection ``name`` in ``<flwr_home>/config.toml``; other sections are kept.

    Returns:
        The config file path.
    """
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    section = connection_toml(name, address, root_certificates=root_certificates, insecure=insecure)
    text = path.read_text(encoding="utf-8") if path.is_file() else '[superlink]\ndefault = "local"\n\n' \
        '[superlink.local]\naddress = ":local:"\n'  # fmt: skip
    # drop an existing [superlink.<name>] block (up to the next table header)
    text = re.sub(rf"(?ms)^\[superlink\.{re.escape(name)}\]\n.*?(?=^\[|\Z)", "", text).rstrip() + "\n\n"
    path.write_text(text + section, encoding="utf-8")
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise DeployError(f"{path}: not valid TOML after adding [superlink.{name}]: {e}") from None
    return path


# ---- command lines ---------------------------------------------------------------------------------------------


def superlink_command(
    *,
    tls: TLSFiles | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_SUPERLINK_PORT,
    database: str | Path | None = None,
    node_auth: bool = True,
) -> list[str]:
    """``flower-superlink`` arguments: TLS (or ``--insecure`` when ``tls`` is None), node authentication,
    no runtime dependency installation, optional on-disk state (``--database``, needed to survive a restart)."""
    args = [_tool("flower-superlink")]
    if tls is None:
        args.append("--insecure")
    else:
        tls.check()
        args += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert)]
        args += ["--ssl-keyfile", str(tls.server_key)]
    if node_auth:
        if tls is None:
            raise DeployError("node authentication needs TLS (give the certificates or drop node auth)")
        args.append("--enable-supernode-auth")
    args += ["--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if database is not None:
        args += ["--database", str(database)]
    return args


def node_config_string(values: Mapping[str, str | int | float | bool]) -> str:
    """``--node-config`` value: space-separated ``key=value`` with TOML-quoted strings."""
    parts = []
    for k, v in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", k):
            raise DeployError(f"node-config key {k!r}: use letters, digits, '_', '.', '-'")
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, int | float):
            parts.append(f"{k}={v}")
        else:
            s = str(v)
            if any(c in s for c in " \"'\\\n"):
                raise DeployError(f"node-config {k}={s!r}: spaces, quotes and backslashes are not supported")
            parts.append(f'{k}="{s}"')
    return " ".join(parts)


def supernode_command(
    *,
    superlink: str,
    site: str,
    data_dir: str | Path | None,
    private_key: str | Path | None,
    root_certificates: str | Path | None,
    port: int = DEFAULT_SUPERNODE_PORT,
    host: str = "127.0.0.1",
    trusted_entities: str | Path | None = None,
    extra_node_config: Mapping[str, str | int | float | bool] | None = None,
    max_wait_time: float | None = None,
) -> list[str]:
    """``flower-supernode`` arguments for one hospital.

    The node config carries ``site`` and ``data-dir`` (absolute): the ClientApp reads the hospital's notes from
    there, never from a path sent by the coordinator. ``root_certificates=None`` means ``--insecure``.
    ``port`` is the node's local runtime API (its ``flwr-clientapp`` processes connect to it).
    """
    args = [_tool("flower-supernode"), "--superlink", superlink]
    if root_certificates is None:
        args.append("--insecure")
    else:
        if not Path(root_certificates).is_file():
            raise DeployError(f"root certificate {root_certificates} does not exist")
        args += ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        if not Path(private_key).is_file():
            raise DeployError(f"SuperNode private key {private_key} does not exist (deploy/gen_node_keys.sh)")
        args += ["--auth-supernode-private-key", str(private_key)]
    nc: dict[str, str | int | float | bool] = {"site": site}
    if data_dir is not None:
        d = Path(data_dir).resolve()
        if not (d / site).is_dir():
            raise DeployError(f"site {site}: data folder {d / site} does not exist (expected <data-dir>/<site>/)")
        nc["data-dir"] = str(d)
    nc.update(extra_node_config or {})
    args += ["--node-config", node_config_string(nc), "--host", host, "--port", str(port)]
    if trusted_entities is not None:
        args += ["--trusted-entities", str(trusted_entities)]
    if max_wait_time is not None:
        args += ["--max-wait-time", str(max_wait_time)]
    return args


# ---- managed processes -----------------------------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """A Flower process started by ``start_process``: own process group, log file and PID file."""

    name: str
    args: list[str]
    log_path: Path
    pid_file: Path
    popen: subprocess.Popen[bytes] = field(repr=False)
    log_offset: int = 0  # the log file is appended to: this process's output starts here

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        """What this process has written to its log so far (earlier runs' output in the same file excluded)."""
        if not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode("utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float, *, start: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` (regex) appears in the log after character ``start``.

        Raises:
            DeployError: the process exited first, or ``timeout`` seconds passed (the log tail is included).
        """
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log_text(), start)
            if m:
                return m
            if not self.alive():
                raise DeployError(
                    f"{self.name} exited with status {self.popen.returncode} before /{pattern}/ appeared; "
                    f"log {self.log_path}:\n{_tail(self.log_text())}"
                )
            if time.monotonic() > deadline:
                tail = _tail(self.log_text())
                raise DeployError(f"{self.name}: /{pattern}/ not seen in {timeout:.0f} s; log:\n{tail}")
            time.sleep(0.25)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its status (``DeployError`` on timeout)."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{self.name} (pid {self.pid}) still running after {timeout:.0f} s") from None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` to the process tree (its group and the groups of its descendants: the SuperLink starts
        ``flower-superexec`` in a session of its own), SIGKILL what is left after ``timeout``; drop the PID file."""
        terminate_tree(self.pid, sig=sig, timeout=timeout)
        try:
            rc = self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            rc = None
        self.pid_file.unlink(missing_ok=True)
        return rc

    def kill(self) -> None:
        """SIGKILL the whole process tree at once (a machine crash)."""
        terminate_tree(self.pid, sig=signal.SIGKILL, timeout=5.0)
        self.popen.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.splitlines()[-n:])


def _ps() -> list[tuple[int, int, int, str, str]]:
    """``(pid, ppid, pgid, stat, args)`` of every process (``ps -ww``: full command lines)."""
    try:
        out = subprocess.run(
            ["ps", "-ww", "-e", "-o", "pid=,ppid=,pgid=,stat=,args="],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DeployError(f"cannot list processes with ps: {e}") from None
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3], parts[4] if len(parts) == 5 else ""))
    return rows


def group_processes(pgid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the live (non-zombie) processes in process group ``pgid``.

    Lets a caller see, e.g., whether a SuperNode is running a ``flwr-clientapp`` (a round in progress).
    """
    return [(pid, args) for pid, _, g, stat, args in _ps() if g == pgid and not stat.startswith("Z")]


def _tree_groups(root: int) -> set[int]:
    """Process groups of ``root`` and all its live descendants."""
    rows = _ps()
    children: dict[int, list[int]] = {}
    pgid_of = {}
    for pid, ppid, pgid, stat, _ in rows:
        if not stat.startswith("Z"):
            children.setdefault(ppid, []).append(pid)
            pgid_of[pid] = pgid
    groups, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            groups.add(pgid_of[child])
            todo.append(child)
    return groups


def _live_in_groups(groups: set[int]) -> bool:
    return any(g in groups and not stat.startswith("Z") for _, _, g, stat, _ in _ps())


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:  # pragma: no cover - another user's process reusing the id
        raise DeployError(f"cannot signal process group {pgid}: {e}") from None


def terminate_tree(root: int, *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal the process group ``root`` (a process started by ``start_process``) and the groups of all its
    descendants; after ``timeout`` s, SIGKILL whatever still runs in those groups."""
    groups = _tree_groups(root)
    for g in groups:
        _signal_group(g, sig)
    deadline = time.monotonic() + timeout
    while _live_in_groups(groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _live_in_groups(groups):
        for g in groups:
            _signal_group(g, signal.SIGKILL)


def start_process(
    name: str,
    args: Sequence[str],
    *,
    state_dir: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> ManagedProcess:
    """Start ``args`` in its own session/process group; stdout+stderr go to ``<state_dir>/<name>.log`` and the
    PID (= process group id) to ``<state_dir>/<name>.pid``, which ``stop_recorded`` uses."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise DeployError(f"process name {name!r}: use letters, digits, '_', '.', '-'")
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    log_path, pid_file = state / f"{name}.log", state / f"{name}.pid"
    if pid_file.is_file():
        old = _read_pid(pid_file)
        if old is not None and group_processes(old):
            raise DeployError(f"{name} already running (pid {old}, {pid_file}); stop it first")
    offset = log_path.stat().st_size if log_path.is_file() else 0
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
            start_new_session=True,
        )
    pid_file.write_text(f"{popen.pid}\n", encoding="utf-8")
    return ManagedProcess(name, list(args), log_path, pid_file, popen, offset)


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def stop_recorded(state_dir: str | Path, names: Sequence[str] | None = None, timeout: float = 15.0) -> list[str]:
    """Stop processes recorded by ``start_process`` in ``state_dir`` (all, or ``names``) by their process group.

    Returns:
        The names that were running and have been stopped.
    """
    stopped = []
    for pid_file in sorted(Path(state_dir).glob("*.pid")):
        name = pid_file.stem
        if names is not None and name not in names:
            continue
        pid = _read_pid(pid_file)
        if pid is not None and group_processes(pid):
            terminate_tree(pid, timeout=timeout)
            stopped.append(name)
        pid_file.unlink(missing_ok=True)
    return stopped


# ---- the flwr CLI ----------------------------------------------------------------------------------------------


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


# ---- the run app folder and runs -------------------------------------------------------------------------------


def app_config(
    cfg: Any, *, run_dir: str | Path, resume: bool = False, server_data_dir: str | Path | None = None
) -> dict[str, Any]:
    """The flat Flower run config of a deployment run: ``cfg.to_flower_run_config()`` plus the ServerApp's
    coordinator-side keys ``run-dir`` (absolute), ``resume`` and ``server-data-dir``."""
    flat: dict[str, Any] = dict(cfg.to_flower_run_config())
    flat["num-server-rounds"] = int(cfg.federation.rounds)
    flat["run-dir"] = str(Path(run_dir).resolve())
    flat["resume"] = bool(resume)
    flat["server-data-dir"] = str(Path(server_data_dir).resolve()) if server_data_dir else ""
    return flat


def write_app_dir(out_dir: str | Path, run_config: Mapping[str, Any], *, version: str | None = None) -> Path:
    """Write the folder ``flwr run`` submits: only a ``pyproject.toml`` naming the installed fedmedlora apps.

    The code itself is NOT shipped: every hospital runs the fedmedlora it installed (same version as the
    coordinator), so the FAB carries the configuration only. All ``run_config`` keys become the app's
    ``[tool.flwr.app.config]`` defaults, which is also the list of keys ``flwr run --run-config`` may override.
    """
    import tomli_w

    from fedmedlora import __version__ as pkg_version

    for k, v in run_config.items():
        if not isinstance(v, bool | int | float | str):
            raise DeployError(f"run config {k}={v!r}: only bool, int, float and str values travel to Flower")
    nested: dict[str, Any] = {}
    for key, value in run_config.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise DeployError(f"run config key {key!r} clashes with a scalar key {p!r}")
        node[leaf] = value
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedmedlora-run",
            "version": version or str(pkg_version),
            "description": "fedmedlora federation run (configuration only; code = the installed fedmedlora)",
            "license": "Apache-2.0",
            "dependencies": [f"fedmedlora=={pkg_version}"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": APP_PUBLISHER,
                    "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
                    "config": nested,
                }
            }
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pyproject.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    return out


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


def completed_rounds(run_dir: str | Path) -> list[int]:
    """Round numbers recorded in ``<run_dir>/rounds.jsonl`` (round 0 = the initial adapter), in file order."""
    path = Path(run_dir) / "rounds.jsonl"
    if not path.is_file():
        return []
    from fedmedlora.jsonl import iter_json_lines

    rounds = []
    for i, record in iter_json_lines(path, DeployError):
        try:
            rounds.append(int(record["round"]))
        except (KeyError, TypeError, ValueError):
            raise DeployError(f"{path}:{i}: not a round record") from None
    return rounds


def can_resume(run_dir: str | Path) -> bool:
    """The ServerApp's resume point (``federation_state.json``) exists in ``run_dir``."""
    return (Path(run_dir) / "federation_state.json").is_file()


def supervise_run(
    app_dir: str | Path,
    connection: str,
    *,
    flwr_home: str | Path,
    run_dir: str | Path,
    timeout: float,
    max_restarts: int = 2,
    resume: bool = False,
    stall_timeout: float | None = None,
    poll: float = 5.0,
    on_event: Any = None,
) -> dict[str, Any]:
    """Coordinator watchdog: submit the run and resubmit it with ``resume=true`` while it fails.

    A run is restarted when it ends ``finished:failed`` (ServerApp crash, lost SuperLink, a site outage longer
    than the round/node-wait timeouts) and ``run_dir`` holds a resume point, or when ``stall_timeout`` seconds
    pass without a new round record (it is then stopped with ``flwr stop`` first). Gives up after
    ``max_restarts`` restarts or ``timeout`` seconds in all. ``resume=True`` makes the first submission a
    resume too (after a coordinator crash).

    Returns:
        The final status dict of the last run, with ``run-ids`` (all submitted runs) added.
    """

    def note(msg: str) -> None:
        if on_event is not None:
            on_event(msg)

    deadline = time.monotonic() + timeout
    run_ids: list[int] = []
    overrides: dict[str, Any] = {"resume": True} if resume else {}
    while True:
        rid = submit_run(app_dir, connection, flwr_home=flwr_home, overrides=overrides)
        run_ids.append(rid)
        note(f"submitted run {rid}" + (" (resume)" if overrides else ""))
        last_rounds, last_change = completed_rounds(run_dir), time.monotonic()
        while True:
            st = run_status(rid, connection, flwr_home=flwr_home)
            if str(st.get("status", "")).startswith(FINISHED):
                break
            now = time.monotonic()
            rounds = completed_rounds(run_dir)
            if rounds != last_rounds:
                last_rounds, last_change = rounds, now
            if stall_timeout is not None and now - last_change > stall_timeout:
                note(f"run {rid}: no new round for {stall_timeout:.0f} s; stopping it")
                stop_run(rid, connection, flwr_home=flwr_home)
                st = wait_for_run(rid, connection, flwr_home=flwr_home, timeout=120)
                st = {**st, "status": "finished:failed", "status-details": "stalled (stopped by the watchdog)"}
                break
            if now > deadline:
                raise DeployError(f"run {rid} still {st.get('status')} when the watchdog's {timeout:.0f} s ran out")
            time.sleep(poll)
        st["run-ids"] = run_ids
        if st.get("status") != "finished:failed":
            return st
        note(f"run {rid} failed: {st.get('status-details')}")
        if len(run_ids) > max_restarts or not can_resume(run_dir) or time.monotonic() > deadline:
            return st
        overrides = {"resume": True}
