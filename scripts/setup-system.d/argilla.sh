#!/usr/bin/env bash
# Idempotent: the Argilla server's own venv (argilla-server 2.8 + noida-db search engine), pinned by
# scripts/argilla-constraints.txt. It lives apart from .venv because argilla-server pins versions
# that gradio 6 cannot live with. Location: $CLINALIGN_ARGILLA_VENV or ~/.cache/clinalign/argilla-venv.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
constraints="$here/argilla-constraints.txt"
venv=${CLINALIGN_ARGILLA_VENV:-$HOME/.cache/clinalign/argilla-venv}
py=${CLINALIGN_ARGILLA_PYTHON:-python3}
stamp="$venv/.clinalign-constraints"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$constraints"; then
  exit 0  # already installed with exactly these pins
fi
echo "clinalign: installing the Argilla server venv in $venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
# Every line of the constraints file is also a requirement: install exactly these.
# (pip's notes about absent local mirror folders are noise here: filtered out)
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  -r <(grep -v '^\s*#' "$constraints") -c "$constraints" 2> >(grep -v "is ignored: it is neither" >&2)
"$venv/bin/python" -c 'import argilla_server, noida_db'
cp "$constraints" "$stamp"
echo "clinalign: Argilla server venv ready ($venv)"
