"""The pure core must not load torch, transformers, peft or flwr (style guide: import direction)."""

import subprocess
import sys

CORE = [
    "fedmedlora",
    "fedmedlora.schema",
    "fedmedlora.jsonl",
    "fedmedlora.config",
    "fedmedlora.runs",
    "fedmedlora.prompts",
    "fedmedlora.parsing",
    "fedmedlora.metrics",
    "fedmedlora.aggregation",
    "fedmedlora.benchmark",
    "fedmedlora.segment",
    "fedmedlora.splits",
]
HEAVY = ["torch", "transformers", "peft", "flwr"]


def test_core_imports_no_heavy_library():
    code = (
        "import importlib, importlib.util, sys\n"
        f"for m in {CORE!r}:\n"
        "    if importlib.util.find_spec(m) is not None:\n"
        "        importlib.import_module(m)\n"
        f"print(','.join(h for h in {HEAVY!r} if h in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core modules imported: {out.stdout.strip()}"
