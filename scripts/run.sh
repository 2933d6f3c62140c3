#!/usr/bin/env bash
# The main job on one machine with nothing installed: get MovieLens-100K, train all
# models, and serve the API on 127.0.0.1:8000 with the embedded default (SQLite +
# in-process cache). Re-running reuses the venv, the dataset and the database.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
py=.venv/bin/python

export DATABASE_URL="${DATABASE_URL:-sqlite:///./aerec.db}"
export ARTIFACTS_DIR="${ARTIFACTS_DIR:-.artifacts}"
export DATA_DIR="${DATA_DIR:-.data}"
export ENVIRONMENT="${ENVIRONMENT:-development}"
export API_KEY="${API_KEY:-dev-key}"
dataset="${DATASET:-ml-100k}"
host="${HOST:-127.0.0.1}"
port="${PORT:-8000}"

$py -m trainer data "$dataset"
$py -m trainer train --dataset "$dataset" --no-gate
$py -m service migrate
$py -m service seed --dataset "$dataset"
echo "serving on http://$host:$port (docs: /docs; API key for writes: \$API_KEY=$API_KEY)" >&2
exec $py -m service --host "$host" --port "$port"
