"""Shared plumbing of the deployment package: its error type and how Flower's command-line tools are found and run.

Owns: ``DeployError`` (every deployment step raises it, never a bare subprocess error), locating this venv's
console scripts (``flower-superlink``, ``flwr``, ...), the environment Flower processes run with (``PATH``,
``FLWR_HOME``), running a one-shot external tool (``openssl``, ``ssh-keygen``) and picking a free TCP port.

Imports nothing else from ``fedmedlora.deploy``; must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


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


def _run_tool(args: Sequence[str], what: str, timeout: float = 120.0) -> None:
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise DeployError(f"{what}: {args[0]} not found on PATH") from None
    if proc.returncode != 0:
        raise DeployError(f"{what} failed ({' '.join(args[:3])} ...): {proc.stderr.strip() or proc.stdout.strip()}")
