"""Benchmark the hashes a shard's pixel digest could use, on one 4,096-row shard of
32x32x3 noise (12 MiB) in memory, one thread: what each costs a build per row.

    .venv/bin/python bench/bench_digest.py

augmat records xxh3-128 (``augmat.store.PIXEL_DIGEST``); files of format 3 recorded
SHA-256. blake3 is measured where its package is installed (it is not a dependency).
Prints a markdown table, best of 7.
"""

from __future__ import annotations

import hashlib
import time
import zlib

import numpy as np
import xxhash

ROWS, ROW_BYTES = 4096, 32 * 32 * 3


def main() -> None:
    data = np.random.default_rng(0).integers(0, 256, ROWS * ROW_BYTES, dtype=np.uint8).tobytes()
    ways = {"SHA-256 (hashlib, OpenSSL)": lambda b: hashlib.sha256(b).digest(),
            "BLAKE2b (hashlib)": lambda b: hashlib.blake2b(b).digest(),
            "CRC-32 (zlib)": zlib.crc32,
            "xxh3-128 (xxhash)": lambda b: xxhash.xxh3_128(b).digest()}
    try:
        import blake3
        ways["BLAKE3 (blake3, 1 thread)"] = lambda b: blake3.blake3(b, max_threads=1).digest()
    except ImportError:
        pass
    print(f"pixel digests of a {len(data) / 2**20:.0f} MiB shard, one thread, best of 7, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| hash | GB/s | us a row |\n| --- | ---: | ---: |")
    for name, fn in ways.items():
        best = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            fn(data)
            best = min(best, time.perf_counter() - t)
        print(f"| {name} | {len(data) / best / 1e9:.2f} | {best / ROWS * 1e6:.2f} |")


if __name__ == "__main__":
    main()
