#!/usr/bin/env bash
# Idempotent system set-up for the integration suites: Debian packages (Chromium for browser tests,
# Redis for the Argilla stack) and the Argilla server's own venv. Each step runs only when missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "clinalign: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for hook in "$here"/setup-system.d/*.sh; do
  [ -e "$hook" ] && bash "$hook"
done
echo "clinalign: system packages ready"
