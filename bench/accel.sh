#!/usr/bin/env bash
# The accelerator checks, one call each, on a bare machine with JAX and a GPU (no TensorFlow,
# no network); docs/benchmarks.md, "On an accelerator", says how to call them and where
# their numbers go.
#
#   bash bench/accel.sh feed    what the GPU consumes of the seed CNN, and whether the HDF5
#                               stream and online augmentation keep up (bench/bench_feed.py
#                               --model seed; a build of 10,000 x 4 copies first): ~3 min
#   bash bench/accel.sh table   the seed's full table, 200 epochs (bench/seed_table_accel.py):
#                               ~5-8 min, estimated
#
# augmat runs from this checkout, uninstalled: the wheels that machine lacks (keras, namex,
# optree: bench/fetch_wheels.sh puts them in .whl/) and the trainer under its installed name
# go to a folder on PYTHONPATH. Settings (environment): SOURCE (default
# data/cifar10-jpeg.tar.gz, a copy of ../shared/data/cifar10-jpeg.tar.gz carried along),
# OUT (default data/accel), PYTHON, KERAS_BACKEND (jax); for `feed` SUBSET (10000), IMAGES
# per timed epoch (20480), ROUNDS (3), BATCHES (128,512); for `table` TABLE_ARGS (e.g.
# "--epochs 5" to calibrate). The last lines printed are the table.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: bash bench/accel.sh feed|table}
PY=${PYTHON:-python3}
OUT=${OUT:-data/accel}
SOURCE=${SOURCE:-data/cifar10-jpeg.tar.gz}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false \
    TF_CPP_MIN_LOG_LEVEL=2

site=/tmp/augmat-site
mkdir -p "$site"
if ! "$PY" -c "import keras" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no keras here and no .whl/: run bench/fetch_wheels.sh first" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
ln -sfn "$PWD/train" "$site/augmat_train"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PY'
import keras
from augmat.kerasenv import accelerators
print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, devices: "
      f"{', '.join(accelerators(keras.backend.backend())) or 'CPU only'}")
PY

case "$what" in
feed)
    file=/tmp/augmat-feed.h5
    "$PY" -m augmat build --source "$SOURCE" --subset "${SUBSET:-10000}" --copies 4 --include-originals \
        --val 1000 -o "$file" --force
    "$PY" bench/bench_feed.py "$file" --model seed --backends "$KERAS_BACKEND" --rounds "${ROUNDS:-3}" \
        --images "${IMAGES:-20480}" --batches "${BATCHES:-128,512}" | tee "$OUT/feed.md"
    cp data/bench_feed.json "$OUT/feed.json"
    ;;
table)
    # shellcheck disable=SC2086  # TABLE_ARGS is a list of flags
    "$PY" bench/seed_table_accel.py "$OUT/seed-table.json" --source "$SOURCE" ${TABLE_ARGS:-}
    ;;
*)
    echo "usage: bash bench/accel.sh feed|table" >&2
    exit 2
    ;;
esac
