# Sourced by the set-up scripts: pip's configuration handed to uv, which does not read pip.conf.
#   uv_flags PYTHON   every `*.find-links`, `*.index-url`, `*.extra-index-url`, `*.constraint` value of
#                     `PYTHON -m pip config list` (global, user, site and PIP_* environment alike) as a
#                     uv flag, one per line
#   export_pip_cert PYTHON   SSL_CERT_FILE from pip's `cert` setting, unless already set
uv_flags() {
  "$1" -m pip --disable-pip-version-check config list 2>/dev/null | while IFS= read -r line; do
    key=${line%%=*}; val=${line#*=}; val=${val#\'}; val=${val%\'}
    case "${key##*.}" in
      find-links) for v in $val; do echo "--find-links=$v"; done ;;
      index-url) echo "--index-url=$val" ;;
      extra-index-url) for v in $val; do echo "--extra-index-url=$v"; done ;;
      constraint) for v in $val; do echo "--constraint=$v"; done ;;
    esac
  done | sort -u
}

export_pip_cert() {
  local cert
  cert=$("$1" -m pip --disable-pip-version-check config list 2>/dev/null \
         | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | head -1)
  if [ -n "$cert" ]; then export SSL_CERT_FILE=${SSL_CERT_FILE:-$cert}; fi
}
