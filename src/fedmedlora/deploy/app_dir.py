"""The "run app" folder submitted with ``flwr run``.

Owns: the flat Flower run configuration of a deployment run (``app_config``: the resolved ``RunConfig`` plus the
ServerApp's coordinator-side keys) and the folder ``flwr run`` submits (``write_app_dir``): a ``pyproject.toml``
naming the installed fedmedlora ServerApp / ClientApp whose ``[tool.flwr.app.config]`` holds the whole run
configuration (``flwr run --run-config`` only accepts keys declared there). No code is shipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmedlora import __version__ as pkg_version
from fedmedlora.config import RunConfig, unflatten
from fedmedlora.deploy.tools import DeployError

APP_PUBLISHER = "fedmedlora"
SERVER_APP = "fedmedlora.federation.server_app:app"
CLIENT_APP = "fedmedlora.federation.client_app:app"


def app_config(
    cfg: RunConfig, *, run_dir: str | Path, resume: bool = False, server_data_dir: str | Path | None = None
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

    for k, v in run_config.items():
        if not isinstance(v, bool | int | float | str):
            raise DeployError(f"run config {k}={v!r}: only bool, int, float and str values travel to Flower")
    try:
        nested = unflatten(run_config)
    except ValueError as e:
        raise DeployError(f"run config {e}") from None
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
