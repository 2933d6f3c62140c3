#!/usr/bin/env bash
# Run the whole test suite in .venv. Needs PostgreSQL and Redis for the storage/cache
# tests (TEST_DATABASE_URL, TEST_REDIS_URL); they skip outside CI when absent, and fail under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
# The compose file is validated by Debian's docker-compose (no Docker engine needed).
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing docker-compose (Debian) to validate docker-compose.yml ..." >&2
  { apt-get install -y -q docker-compose || { apt-get update -q && apt-get install -y -q docker-compose; }; } >/dev/null 2>&1 \
    || echo "warning: could not install docker-compose" >&2
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep, not spin, on a busy machine
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
exec .venv/bin/python -m pytest "$@"
