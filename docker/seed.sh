#!/bin/sh
# One-shot demo seed: load a MovieLens dataset into the database and train once,
# unless a model version is already published (so restarts are no-ops).
set -eu
if [ -s "${ARTIFACTS_DIR}/LATEST" ]; then
  echo "seed: version $(cat "${ARTIFACTS_DIR}/LATEST") already published; nothing to do"
  exit 0
fi
python -m service seed --dataset "${SEED_DATASET:-ml-100k}"
python -m trainer train --from-db --no-gate --models "${TRAIN_MODELS:-all}"
