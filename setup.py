"""The one compiled part of augmat, augmat/_ckernels.c: the seed's scipy arithmetic for a
batch, the per-image lookup tables and HDF5's Fletcher-32 (augmat/kernels.py says what
each computes). Everything else about the package is in pyproject.toml.

-ffp-contract=off: no fused multiply-adds the source does not ask for, so every value
rounds as in scipy (never -ffast-math). -fno-math-errno and -fno-trapping-math only let
floor() and the like become single vector instructions; they change no value."""

from setuptools import Extension, setup

# GCC or Clang (the kernels use their vector extension). -Wno-psabi, -Wno-maybe-uninitialized:
# GCC 12 notes that AVX vectors change the ABI of functions that pass them (none leave the
# file), and takes the rotation's weight vectors, set in a loop of four, for unset.
flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi",
         "-Wno-maybe-uninitialized"]
setup(ext_modules=[Extension("augmat._ckernels", ["augmat/_ckernels.c"], extra_compile_args=flags)])
