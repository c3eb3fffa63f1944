#!/usr/bin/env bash
# Idempotent: the vLLM generation backend's own venv (scripts/setup-vllm.sh says why and where).
# Part of the system set-up because, like the Argilla server, it is a service clinalign starts and
# talks to over HTTP; its engine tests need it. CLINALIGN_VLLM=0 skips it.
set -euo pipefail
bash "$(cd "$(dirname "$0")/.." && pwd)/setup-vllm.sh" 2> >(grep -v "is ignored: it is neither" >&2)
