#!/usr/bin/env bash
# Sets up a fresh checkout: .venv with camserve (editable) and its test tools. Idempotent.
#   --test-tools  also the system tools some tests drive (Debian's docker-compose and nginx, via
#                 apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,ray]'
if [ "${1:-}" = "--test-tools" ]; then
  missing=()
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
