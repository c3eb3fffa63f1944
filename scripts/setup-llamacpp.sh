#!/usr/bin/env bash
# Idempotent: llama-cpp-python (the llama.cpp generation backend) in the project venv.
# The registry has no binary wheel, so it compiles once for this CPU (-march=native) and the wheel is
# kept in ~/.cache/clinalign/wheels/<version>-<cpu flags hash>/; a second set-up, or a fresh clone on a
# machine with that cache, installs the cached wheel in seconds. Skip with CLINALIGN_LLAMACPP=0.
# Measured compile on this 2-core machine: see README (generation backends).
set -euo pipefail
VENV=${1:-.venv}
VERSION=${LLAMACPP_VERSION:-0.3.36}
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
if [ "${CLINALIGN_LLAMACPP:-1}" = "0" ]; then
  echo "clinalign: llama.cpp backend skipped (CLINALIGN_LLAMACPP=0); generation uses transformers"
  exit 0
fi
if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$VERSION')" 2>/dev/null \
   && "$PY" -c "import llama_cpp.llama_cpp" 2>/dev/null; then
  echo "clinalign: llama-cpp-python $VERSION already installed"
  exit 0
fi
# GGML_NATIVE: kernels for this CPU (AVX-512 BF16 / AMX here); LLAVA_BUILD=OFF: no multimodal library
# (a quarter of the compile, unused by clinalign).
CMAKE_ARGS_LLAMA="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF"
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m)
key=$(printf '%s|%s|%s|%s' "$VERSION" "$CMAKE_ARGS_LLAMA" "$("$PY" -c 'import sys; print(sys.version_info[:2])')" "$flags" \
      | sha256sum | cut -c1-16)
cache="${CLINALIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clinalign}/wheels/llama-cpp-$VERSION-$key"
wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "clinalign: compiling llama-cpp-python $VERSION for this CPU (once; cached in $cache)"
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.build.XXXXXX")
  start=$(date +%s)
  CMAKE_ARGS="$CMAKE_ARGS_LLAMA" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "${PIP[@]}" wheel -q --no-deps --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION"
  mv "$tmp"/llama_cpp_python-*.whl "$cache"/
  rmdir "$tmp"
  echo "clinalign: llama-cpp-python compiled in $(( $(date +%s) - start )) s"
  wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi
"${PIP[@]}" install -q "$wheel"
"$PY" -c "import llama_cpp.llama_cpp as l; l.llama_backend_init()"
echo "clinalign: llama.cpp backend ready (llama-cpp-python $VERSION)"
