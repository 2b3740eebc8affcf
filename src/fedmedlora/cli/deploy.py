"""``fedmedlora deploy``: a real multi-hospital deployment on Flower's Deployment Engine (guide: deploy/README.md).

TLS certificates, hospital node keys, the operator's connection, SuperLink / SuperNode command lines, node
registration, submitting and supervising a run. The work is done by ``fedmedlora.deploy`` (which loads neither
torch nor flwr: those run in the Flower processes it starts).
"""

from __future__ import annotations

import os
import shlex
import socket
import tempfile
from pathlib import Path

import typer

from fedmedlora import deploy
from fedmedlora.benchmark import default_benchmark_dir
from fedmedlora.cli.common import ConfigOpt, SetOpt, fail, resolve

deploy_app = typer.Typer(
    no_args_is_help=True,
    help="Real deployment on Flower's Deployment Engine: TLS, hospital keys, SuperLink/SuperNodes.",
)
FlwrHomeOpt = typer.Option(
    None, "--flwr-home", help="Flower config folder of the operator (default: $FLWR_HOME or ~/.flwr)."
)
ConnOpt = typer.Option(
    ..., "--connection", help="Connection name in $FLWR_HOME/config.toml (`fedmedlora deploy connection`)."
)
StateOpt = typer.Option(
    None,
    "--background",
    help="Start in the background; log and PID go to this folder (stop: `fedmedlora deploy down`).",
)


def _flwr_home(opt: Path | None) -> Path:
    return opt or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def _launch(name: str, args: list[str], state: Path | None, dry_run: bool, flwr_home: Path | None = None) -> None:
    """Print the command; then replace this process with it, or start it in the background with a PID file."""
    typer.echo(shlex.join(args))
    if dry_run:
        return
    env = deploy.flower_env(flwr_home)
    if state is None:
        os.execve(args[0], args, env)  # foreground: signals (Ctrl+C, systemd stop) go straight to Flower
    proc = deploy.start_process(name, args, state_dir=state, env=env)
    typer.echo(f"{name}: pid {proc.pid}, log {proc.log_path}")


@deploy_app.command("certs")
def deploy_certs(
    out: Path = typer.Option(
        Path("deploy/certs"), "--out", "-o", help="Folder for ca.crt, ca.key, server.pem, server.key."
    ),
    san: list[str] = typer.Option(
        None, "--san", help="Extra subjectAltName, e.g. DNS:coord.example.org or IP:10.0.0.5."
    ),
    days: int = typer.Option(365, help="Validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (every hospital needs the new ca.crt)."),
) -> None:
    """Self-signed CA + SuperLink certificate FOR TEST DEPLOYMENTS (production: your PKI; see deploy/README.md)."""
    try:
        files = deploy.generate_certs(out, sans=san or (), days=days, force=force)
    except deploy.DeployError as e:
        raise fail(str(e)) from None
    typer.echo(
        f"CA (give to hospitals and the flwr CLI): {files.ca_cert}\nSuperLink: {files.server_cert}, {files.server_key}"
    )


@deploy_app.command("node-key")
def deploy_node_key(
    sites: list[str] = typer.Argument(..., help="Site names (a hospital runs this for its own site only)."),
    out: Path = typer.Option(Path("deploy/keys"), "--out", "-o", help="Folder for <site> and <site>.pub."),
) -> None:
    """ECDSA P-384 key pair per hospital for SuperNode authentication (the .pub goes to the coordinator)."""
    for site in sites:
        try:
            private, public = deploy.generate_node_key(out, site)
        except deploy.DeployError as e:
            raise fail(str(e)) from None
        typer.echo(f"{site}: private {private} (stays at the hospital), public {public} (send to the coordinator)")


@deploy_app.command("connection")
def deploy_connection(
    name: str = typer.Argument(..., help="Connection name, used as `flwr ... <name>` and --connection."),
    address: str = typer.Option(..., "--address", help="SuperLink host:port."),
    ca: Path = typer.Option(None, "--ca", help="CA certificate that signed the SuperLink's certificate."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS (local debugging only)."),
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Write the superlink.NAME connection section of $FLWR_HOME/config.toml (absolute CA path, as flwr needs)."""
    if ca is None and not insecure:
        raise fail("give --ca <ca.crt> (or --insecure for a local test without TLS)")
    try:
        path = deploy.write_connection(_flwr_home(flwr_home), name, address, root_certificates=ca, insecure=insecure)
    except deploy.DeployError as e:
        raise fail(str(e)) from None
    typer.echo(f"connection {name} -> {address} written to {path}")


@deploy_app.command("superlink")
def deploy_superlink(
    certs: Path = typer.Option(Path("deploy/certs"), "--certs", help="Folder with ca.crt, server.pem, server.key."),
    host: str = typer.Option("127.0.0.1", help="Listen address (0.0.0.0 for hospitals on other machines)."),
    port: int = typer.Option(9092, help="HTTPS port for the Fleet, Control and Runtime APIs."),
    database: Path = typer.Option(
        Path("deploy/state/superlink.db"), help="On-disk state: registered keys and runs survive a restart."
    ),
    in_memory: bool = typer.Option(
        False,
        "--in-memory",
        help="Keep the SuperLink's state in memory instead of --database: no SQLite writer lock when many sites "
        "reply at once, but registered keys and runs are lost when the SuperLink stops (re-register, no resume).",
    ),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS and no node authentication (debugging only)."),
    background: Path = StateOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the command."),
) -> None:
    """Start the coordinator's SuperLink (TLS + node authentication, no runtime dependency installation)."""
    try:
        if not in_memory:
            database.parent.mkdir(parents=True, exist_ok=True)
        tls = None if insecure else deploy.TLSFiles.in_dir(certs)
        args = deploy.superlink_command(
            tls=tls, host=host, port=port, database=None if in_memory else database.resolve(), node_auth=not insecure
        )
        _launch("superlink", args, background, dry_run)
    except deploy.DeployError as e:
        raise fail(str(e)) from None


@deploy_app.command("supernode")
def deploy_supernode(
    site: str = typer.Option(..., "--site", help="This hospital's site name (the ClientApp reads <data>/<site>/)."),
    data: Path = typer.Option(..., "--data", help="Folder holding <site>/train.jsonl and <site>/dev.jsonl."),
    key: Path = typer.Option(..., "--key", help="This hospital's private key (`fedmedlora deploy node-key`)."),
    ca: Path = typer.Option(Path("deploy/certs/ca.crt"), "--ca", help="CA certificate of the SuperLink."),
    superlink: str = typer.Option("127.0.0.1:9092", "--superlink", help="SuperLink host:port."),
    port: int = typer.Option(9094, help="Local port of this node's runtime API (one per node on a machine)."),
    trusted_entities: Path = typer.Option(None, help="YAML of Ed25519 keys whose signed apps this node runs."),
    state_dir: Path = typer.Option(
        None,
        "--state-dir",
        help="Site-local folder for the state a site carries between rounds (FedSA's B, optimiser, DP ledger); "
        "written atomically every round, survives restarts. Default: <data>/<site>.state",
    ),
    privacy_ledger: Path = typer.Option(
        None, "--privacy-ledger", help="JSON file of this site's DP-SGD ledger across runs (docs/privacy.md)."
    ),
    resident_model: bool = typer.Option(
        False,
        "--resident-model",
        help="Also start a site worker that keeps the model loaded between rounds (socket <state-dir>/worker.sock; "
        "its log and PID go to --background, else to the state dir). Each round then skips loading the model.",
    ),
    threads: int = typer.Option(0, "--threads", help="torch threads of the resident worker (0: torch's default)."),
    background: Path = StateOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the command."),
) -> None:
    """Start a hospital's SuperNode (authenticated with its key; its notes stay in --data)."""
    state = (state_dir or data / f"{site}.state").resolve()
    extra = {"state-dir": str(state)}
    if privacy_ledger is not None:
        extra["privacy-ledger"] = str(privacy_ledger.resolve())
    try:
        if resident_model:
            sock = state / "worker.sock"
            _start_worker(site, sock, threads, background or state, dry_run)
            extra[deploy.SITE_WORKER_NODE_KEY] = str(sock)
        args = deploy.supernode_command(
            superlink=superlink,
            site=site,
            data_dir=data,
            private_key=key,
            root_certificates=ca,
            port=port,
            trusted_entities=trusted_entities,
            extra_node_config=extra,
        )
        _launch(f"supernode-{site}", args, background, dry_run)
    except deploy.DeployError as e:
        raise fail(str(e)) from None


def _start_worker(site: str, sock: Path, threads: int, logs: Path, dry_run: bool) -> None:
    """Start the resident worker in the background and wait until it listens (it imports torch first).

    A worker already listening on ``sock`` (the SuperNode was restarted, e.g. by systemd) is kept."""
    args = deploy.site_worker_command(sock, threads=threads)
    typer.echo(shlex.join(args))
    if dry_run:
        return
    if _listening(sock):
        typer.echo(f"site-worker-{site}: already listening on {sock}; keeping it")
        return
    typer.echo(f"site-worker-{site}: starting, log {logs / f'site-worker-{site}.log'}")
    proc = deploy.start_site_worker(site, sock, state_dir=logs, threads=threads)
    typer.echo(f"site-worker-{site}: pid {proc.pid}, listening on {sock}")


def _listening(sock: Path) -> bool:
    if not sock.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


@deploy_app.command("site-worker")
def deploy_site_worker(
    socket_path: Path = typer.Option(
        ...,
        "--socket",
        help="Unix socket to serve; the SuperNode's node config "
        "`site-worker` must name it (`deploy supernode --resident-model` does both).",
    ),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: torch's default)."),
    background: Path = StateOpt,
) -> None:
    """Run a site's resident worker: it keeps the model loaded and serves every round's ClientApp (docs/deployment)."""
    try:
        args = deploy.site_worker_command(socket_path, threads=threads)
        _launch(f"site-worker-{socket_path.stem}", args, background, dry_run=False)
    except deploy.DeployError as e:
        raise fail(str(e)) from None


@deploy_app.command("register")
def deploy_register(
    public_keys: list[Path] = typer.Argument(..., help="Hospitals' public keys (<site>.pub); the name = file stem."),
    connection: str = ConnOpt,
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Register hospitals' public keys with the SuperLink (only registered keys may connect)."""
    for pub in public_keys:
        try:
            node_id = deploy.register_node(pub, connection, flwr_home=_flwr_home(flwr_home), name=pub.stem)
        except deploy.DeployError as e:
            raise fail(str(e)) from None
        typer.echo(f"{pub.stem}: node id {node_id}")


@deploy_app.command("run")
def deploy_run(
    connection: str = ConnOpt,
    run_dir: Path = typer.Option(..., "--run-dir", help="Run folder ON THE COORDINATOR (rounds, checkpoints)."),
    resume: bool = typer.Option(False, help="Continue the run in --run-dir after its last completed round."),
    server_data: Path = typer.Option(None, "--server-data", help="Folder with _server/validation.jsonl (coordinator)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the run to finish."),
    max_restarts: int = typer.Option(0, help="Watchdog: resubmit with resume this many times if the run fails."),
    stall_timeout: float = typer.Option(None, help="Watchdog: stop and resume a run with no new round for N s."),
    timeout: float = typer.Option(86400.0, help="Give up waiting after N s (the run itself keeps going)."),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Submit a federation to a running deployment (the whole resolved config travels as the app's run config)."""
    cfg = resolve(config, sets)
    home = _flwr_home(flwr_home)
    if server_data is None:
        server_data = Path(cfg.data.benchmark or default_benchmark_dir())
    try:
        with tempfile.TemporaryDirectory(prefix="fedmedlora-app-") as tmp:
            app_dir = deploy.write_app_dir(
                tmp, deploy.app_config(cfg, run_dir=run_dir, resume=resume, server_data_dir=server_data)
            )
            if not wait:
                run_id = deploy.submit_run(app_dir, connection, flwr_home=home)
                typer.echo(f"run {run_id} submitted; follow it with: flwr log {run_id} {connection}")
                return
            status = deploy.supervise_run(
                app_dir,
                connection,
                flwr_home=home,
                run_dir=run_dir,
                timeout=timeout,
                max_restarts=max_restarts,
                stall_timeout=stall_timeout,
                on_event=typer.echo,
            )
    except deploy.DeployError as e:
        raise fail(str(e)) from None
    typer.echo(f"run {status.get('run-id')}: {status.get('status')} {status.get('status-details') or ''}".rstrip())
    typer.echo(f"run folder: {run_dir.resolve()} (rounds recorded: {deploy.completed_rounds(run_dir)})")
    if status.get("status") != "finished:completed":
        raise typer.Exit(1)


@deploy_app.command("status")
def deploy_status(
    run_id: int = typer.Argument(..., help="Run id printed by `fedmedlora deploy run`."),
    connection: str = ConnOpt,
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Status of a run and of the registered hospitals' nodes."""
    home = _flwr_home(flwr_home)
    try:
        st = deploy.run_status(run_id, connection, flwr_home=home)
        nodes = deploy.list_nodes(connection, flwr_home=home)
    except deploy.DeployError as e:
        raise fail(str(e)) from None
    typer.echo(f"run {run_id}: {st.get('status')} {st.get('status-details') or ''}".rstrip())
    for n in nodes:
        typer.echo(f"node {n.get('node-id')}: {n.get('status')}")


@deploy_app.command("down")
def deploy_down(
    state: Path = typer.Option(..., "--state", help="Folder given to --background."),
) -> None:
    """Stop the processes started with --background, by their recorded process groups."""
    stopped = deploy.stop_recorded(state)
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
