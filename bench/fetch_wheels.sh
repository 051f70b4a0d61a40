#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels the accelerator machine lacks to run augmat
# under Keras 3 with the JAX backend: keras, namex, optree for CPython 3.12 on x86-64 Linux.
# Everything else augmat needs (numpy, h5py, scipy, numba, OpenCV, Pillow, click, tqdm,
# matplotlib, jax with CUDA) is on that machine's image. Run it once here, where PyPI is
# reachable; bench/accel.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "keras==${KERAS_VERSION:-3.15.1}" "namex==0.1.0" "optree==0.20.0"
ls -l .whl
