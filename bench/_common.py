"""Shared helpers for the benchmark scripts: machine description, human-readable sizes, JSON output, rich tables.

Every benchmark labels its table and its JSON with ``machine_info()`` so numbers from different machines are
never mixed up. This module imports torch only when asked for GPU details (``machine_info(gpu=True)``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(*, gpu: bool = False) -> dict[str, Any]:
    """Describe the machine: CPU model, cores usable by this process, RAM, Python/numpy/torch versions, GPU.

    Args:
        gpu: import torch and report the CUDA device name, memory and capability (if any).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "gpu": None,
        # other jobs on a shared machine distort timings: record how busy it was when the run started
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if gpu:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda,
                "count": torch.cuda.device_count(),
            }
    return info


def machine_label(info: dict[str, Any]) -> str:
    """One line for table captions: ``CPU (N cores usable), RAM, GPU``."""
    gpu = info.get("gpu")
    gpu_txt = f", GPU {gpu['name']} ({gpu['memory_gib']} GiB)" if gpu else ", no GPU"
    return (
        f"{info['cpu']} ({info['cores_usable']} cores usable), {info['ram_gib']} GiB RAM{gpu_txt}; "
        f"torch {info.get('torch')}, numpy {info.get('numpy')}, Python {info['python']}; "
        f"load avg {info.get('load_avg_1m_at_start')} at start"
    )


def human_bytes(n: float) -> str:
    """Decimal units (MB = 10⁶ bytes), as network payloads are usually quoted."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus a UTC timestamp) as indented JSON, creating parent folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **payload}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    """Print a rich table (right-aligned numbers); falls back to plain text if rich is missing."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a project dependency
        print(title)
        print(" | ".join(columns))
        for row in rows:
            print(" | ".join(str(c) for c in row))
        if caption:
            print(caption)
        return
    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=200).print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same table as GitHub Markdown (for docs/performance.md)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
