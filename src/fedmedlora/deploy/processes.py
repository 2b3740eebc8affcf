"""Starting and stopping the Flower processes of a deployment.

Owns: ``ManagedProcess`` (a process started in its own session/process group, with a log file and a PID file),
``start_process``, reading the process table (``ps``), process-group membership, ``terminate_tree`` (a stop
also ends the ``flower-superexec`` and app children a SuperLink or SuperNode starts in sessions of their own),
and ``stop_recorded`` (stopping what a previous command recorded in a state folder).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmedlora.deploy.tools import DeployError


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
