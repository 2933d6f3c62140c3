#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the project with the given extras; idempotent.
# torch is installed first and pinned exactly: a looser pin would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
[ -n "$python_bin" ] || { echo "error: Python 3.11+ not found (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
"$python_bin" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "error: $python_bin is older than Python 3.11" >&2; exit 2; }
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp=".venv/.installed${extras:+-$extras}"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing aerec${extras:+[$extras]} into .venv ..." >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
  echo "$want" > "$stamp"
fi
# The dashboard's browser test drives Debian's chromium with Playwright (which never downloads one here).
if [ "$extras" = "dev" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium (Debian) for the dashboard's browser test ..." >&2
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium" >&2
fi
