"""What the Flower processes and the ``flwr`` CLI are told: command lines and connection configuration.

Owns: the ``[superlink.<name>]`` connection section of ``$FLWR_HOME/config.toml`` the ``flwr`` CLI uses (root
certificate made absolute), the exact ``flower-superlink`` / ``flower-supernode`` argument lists (TLS or
``--insecure``, node authentication, on-disk state, the SuperNode's ``--node-config``), and the log marker of a
SuperNode whose key the SuperLink refused. Builds argument lists only; starting them is ``processes``' job.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import tomli_w

from fedmedlora.deploy.pki import TLSFiles
from fedmedlora.deploy.processes import ManagedProcess, start_process
from fedmedlora.deploy.tools import DeployError, _tool

DEFAULT_SUPERLINK_PORT = 9092
DEFAULT_SUPERNODE_PORT = 9094
UNREGISTERED_KEY_MARKER = "Failed to activate SuperNode"


# ---- the flwr CLI's connection configuration -------------------------------------------------------------------


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def check_address(address: str) -> str:
    """``host:port`` with a plain host name, IPv4 or ``[IPv6]`` and a port in 1–65535.

    Raises:
        DeployError: naming what is wrong with the address.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not _HOST.match(host):
        raise DeployError(f"address {address!r}: expected host:port, e.g. coordinator.example.org:9093")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DeployError(f"address {address!r}: the port must be a number in 1-65535")
    return address


def _connection_table(
    name: str, address: str, *, root_certificates: str | Path | None = None, insecure: bool = False
) -> dict[str, str | bool]:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise DeployError(f"connection name {name!r}: use letters, digits, '_', '-'")
    table: dict[str, str | bool] = {"address": check_address(address)}
    if insecure:
        table["insecure"] = True
    elif root_certificates is not None:
        ca = Path(root_certificates).resolve()
        if not ca.is_file():
            raise DeployError(f"root certificate {ca} does not exist")
        table["root-certificates"] = str(ca)
    return table


def connection_toml(
    name: str, address: str, *, root_certificates: str | Path | None = None, insecure: bool = False
) -> str:
    """The ``[superlink.<name>]`` section of ``$FLWR_HOME/config.toml`` (root certificate made absolute)."""
    table = _connection_table(name, address, root_certificates=root_certificates, insecure=insecure)
    return tomli_w.dumps({"superlink": {name: table}})


def write_connection(
    flwr_home: str | Path,
    name: str,
    address: str,
    *,
    root_certificates: str | Path | None = None,
    insecure: bool = False,
) -> Path:
    """Add (or replace) the connection ``name`` in ``<flwr_home>/config.toml``; other sections are kept.

    Everything is validated before the file is touched; the new file is written with a TOML library, atomically
    (temporary file + rename), and the previous one is kept as ``config.toml.bak``. A failed call leaves the file
    as it was.

    Returns:
        The config file path.

    Raises:
        DeployError: a bad name, address or certificate path, or an existing config that is not valid TOML.
    """
    table = _connection_table(name, address, root_certificates=root_certificates, insecure=insecure)
    home = Path(flwr_home)
    path = home / "config.toml"
    if path.is_file():
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise DeployError(f"{path}: not valid TOML ({e}); fix or move it, it was left as it is") from None
    else:
        doc = {"superlink": {"default": "local", "local": {"address": ":local:"}}}
    superlink = doc.setdefault("superlink", {})
    if not isinstance(superlink, dict):
        raise DeployError(f"{path}: 'superlink' is not a table; fix or move the file, it was left as it is")
    superlink[name] = table
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.partial")
    tmp.write_text(tomli_w.dumps(doc), encoding="utf-8")
    if path.is_file():
        shutil.copy2(path, path.with_suffix(".toml.bak"))
    tmp.replace(path)
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


#: Node config key naming the resident worker's socket (``fedmedlora.federation.site_worker.WORKER_NODE_KEY``).
SITE_WORKER_NODE_KEY = "site-worker"


def site_worker_command(socket_path: str | Path, *, threads: int = 0) -> list[str]:
    """The command of a site's resident worker (``fedmedlora.federation.site_worker``): it keeps the model loaded
    and serves the ClientApp of every round on the Unix socket ``socket_path``. ``threads`` > 0 sets torch's
    thread count in the worker (0: torch's default)."""
    if threads < 0:
        raise DeployError(f"threads must be >= 0, got {threads}")
    return [sys.executable, "-m", "fedmedlora.federation.site_worker", str(Path(socket_path).resolve()), str(threads)]


def start_site_worker(
    site: str,
    socket_path: str | Path,
    *,
    state_dir: str | Path,
    threads: int = 0,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> ManagedProcess:
    """Start ``site``'s resident worker as ``site-worker-<site>`` (log and PID in ``state_dir``) and wait until it
    listens on ``socket_path`` (it imports torch first).

    Raises:
        DeployError: it exited, or did not listen within ``timeout`` seconds (the log tail is included).
    """
    proc = start_process(
        f"site-worker-{site}", site_worker_command(socket_path, threads=threads), state_dir=state_dir, env=env
    )
    proc.wait_for_log(r"site worker listening on", timeout)
    return proc
