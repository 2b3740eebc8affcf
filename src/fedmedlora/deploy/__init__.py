"""Real multi-hospital deployment on Flower's Deployment Engine: TLS material, node keys, processes, runs.

Owns: the self-signed test CA and SuperLink certificate (``openssl``), per-hospital ECDSA keys for SuperNode
authentication (``ssh-keygen``), the ``$FLWR_HOME/config.toml`` connection section the ``flwr`` CLI uses, the
exact ``flower-superlink`` / ``flower-supernode`` command lines, starting and stopping them as subprocesses with
recorded PIDs (each in its own process group, so a stop also ends its ``flower-superexec`` and app children),
the small "run app" folder submitted with ``flwr run`` (a ``pyproject.toml`` whose ``[tool.flwr.app.config]``
holds the whole resolved run configuration), and submitting / watching / stopping runs through the ``flwr`` CLI.

One module per concern; this package only re-exports their public names (``from fedmedlora import deploy;
deploy.X`` and ``from fedmedlora.deploy import X`` both work):

    tools       DeployError, locating Flower's console scripts, the Flower process environment, free ports
    pki         the test CA / SuperLink certificate (``TLSFiles``) and SuperNode key pairs
    commands    ``flower-superlink`` / ``flower-supernode`` / site-worker commands, the ``flwr`` connection config
    processes   ``ManagedProcess``: start, watch and stop process groups; PID files
    control     the ``flwr`` CLI: register / list nodes, submit / watch / stop runs, run logs
    app_dir     the run configuration and the app folder ``flwr run`` submits
    watchdog    round records, resume points and ``supervise_run`` (resubmit a failed run, resuming)
    loopback    ``LoopbackDeployment``: a whole deployment on one machine (tests, benchmarks, trying it out);
                imported as ``fedmedlora.deploy.loopback``, not re-exported

Dependency direction (no cycles): ``tools`` <- ``pki``, ``processes``, ``control``, ``app_dir``; ``pki`` and
``processes`` <- ``commands``; ``control`` <- ``watchdog``; all of them <- ``loopback``.

Verified on flwr 1.41.0 (see deploy/README.md): the SuperLink serves the Fleet, Control and Runtime APIs over
HTTPS on one ``--host/--port``; ``flwr run --run-config`` only accepts keys declared in the app's
``pyproject.toml``; ``root-certificates`` in ``config.toml`` must be an absolute path; an unregistered SuperNode
key is refused ("Exit Code: 305 ... Failed to activate SuperNode", process exit status non-zero); ``flwr run``
exits 0 even when the run fails, so the run status must be read with ``flwr list <run-id>``.

Must not import torch, transformers, peft or flwr: Flower is driven through its command-line tools only, so this
package (and ``fedmedlora deploy ...``) works on a coordinator or hospital machine and in tests without loading
the Flower runtime into the calling process.
"""

from __future__ import annotations

from fedmedlora.deploy.app_dir import APP_PUBLISHER, CLIENT_APP, SERVER_APP, app_config, write_app_dir
from fedmedlora.deploy.commands import (
    DEFAULT_SUPERLINK_PORT,
    DEFAULT_SUPERNODE_PORT,
    SITE_WORKER_NODE_KEY,
    UNREGISTERED_KEY_MARKER,
    connection_toml,
    node_config_string,
    site_worker_command,
    start_site_worker,
    superlink_command,
    supernode_command,
    write_connection,
)
from fedmedlora.deploy.control import (
    FINISHED,
    flwr_cli,
    list_nodes,
    register_node,
    run_logs,
    run_status,
    stop_run,
    submit_run,
    wait_for_nodes,
    wait_for_run,
)
from fedmedlora.deploy.pki import TLSFiles, generate_certs, generate_node_key
from fedmedlora.deploy.processes import ManagedProcess, group_processes, start_process, stop_recorded, terminate_tree
from fedmedlora.deploy.tools import DeployError, flower_env, free_port, venv_bin
from fedmedlora.deploy.watchdog import can_resume, completed_rounds, supervise_run

__all__ = [
    "APP_PUBLISHER",
    "CLIENT_APP",
    "DEFAULT_SUPERLINK_PORT",
    "DEFAULT_SUPERNODE_PORT",
    "FINISHED",
    "SERVER_APP",
    "SITE_WORKER_NODE_KEY",
    "UNREGISTERED_KEY_MARKER",
    "DeployError",
    "ManagedProcess",
    "TLSFiles",
    "app_config",
    "can_resume",
    "completed_rounds",
    "connection_toml",
    "flower_env",
    "flwr_cli",
    "free_port",
    "generate_certs",
    "generate_node_key",
    "group_processes",
    "list_nodes",
    "node_config_string",
    "register_node",
    "run_logs",
    "run_status",
    "site_worker_command",
    "start_process",
    "start_site_worker",
    "stop_recorded",
    "stop_run",
    "submit_run",
    "superlink_command",
    "supernode_command",
    "supervise_run",
    "terminate_tree",
    "venv_bin",
    "wait_for_nodes",
    "wait_for_run",
    "write_app_dir",
    "write_connection",
]
