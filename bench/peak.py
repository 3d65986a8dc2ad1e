"""float32 matmul GFLOP/s on this machine, the better of keras.ops.matmul and numpy's BLAS: the reference for the
"% of peak" ratios (both are printed).

    python bench/peak.py                 # 2048x2048, median of 5 after a warm-up
    KERAS_BACKEND=jax python bench/peak.py --size 4096
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def _sync(x) -> None:
    """Wait until x is computed (asynchronous backends: JAX, GPUs)."""
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    else:
        import keras
        keras.ops.convert_to_numpy(x[:1, :1])


def matmul_peak(size: int = 2048, repeats: int = 5, inner: int = 0, dtype: str = "float32") -> dict:
    """Median GFLOP/s of size x size matmuls (2*size^3 FLOPs each), after one warm-up sample.

    Each timed sample chains `inner` products (each one's input is the previous output, rescaled so the
    values stay finite), then waits once, so the timing holds for asynchronous devices too. With inner=0
    it is chosen to make a sample about 0.3 s long.
    """
    import keras
    import numpy as np
    ops = keras.ops
    rng = np.random.default_rng(0)
    # BLAS first: TensorFlow's worker threads keep spinning for a while after its own ops.
    host_a = rng.standard_normal((size, size)).astype(dtype)
    host_a @ host_a
    host = []
    for _ in range(repeats):
        start = time.perf_counter()
        host_a @ host_a
        host.append(time.perf_counter() - start)
    a = ops.convert_to_tensor(rng.standard_normal((size, size)).astype(dtype) / np.sqrt(size))
    b = ops.convert_to_tensor(rng.standard_normal((size, size)).astype(dtype))
    flops = 2.0 * size ** 3

    def sample(count: int) -> float:
        start = time.perf_counter()
        x = b
        for _ in range(count):
            x = ops.matmul(a, x)
        _sync(x)
        return time.perf_counter() - start

    sample(1)  # warm-up: allocation, kernel selection, compilation
    if inner <= 0:
        probe = sample(2) / 2
        inner = max(1, min(1000, int(0.3 / max(probe, 1e-6))))
    times = [sample(inner) / inner for _ in range(repeats)]
    # Eager keras.ops.matmul on a TensorFlow CPU reaches only about a fifth of what the same CPU's BLAS
    # does; the reference peak is the best of both, so "% of peak" is not flattered by a slow op path.
    keras_gflops = flops / common.median(times) / 1e9
    numpy_gflops = flops / common.median(host) / 1e9
    return {"size": size, "inner": inner, "repeats": repeats, "seconds": times,
            "gflops": max(keras_gflops, numpy_gflops), "keras_gflops": keras_gflops, "numpy_gflops": numpy_gflops,
            "gflops_all": [flops / t / 1e9 for t in times]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[2048], help="matrix side(s) (default 2048)")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per size (default 5)")
    parser.add_argument("--inner", type=int, default=0,
                        help="matmuls per timed sample (default: enough for about 0.3 s)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    common.quiet_logs()
    rows, results = [], []
    for size in args.size:
        result = matmul_peak(size, args.repeats, args.inner)
        results.append(result)
        rows.append([f"{size}x{size}", result["inner"], result["repeats"],
                     common.median(result["seconds"]) * 1e3, result["keras_gflops"], result["numpy_gflops"],
                     result["gflops"]])
    common.report("float32 matmul peak (best of keras.ops.matmul and numpy's BLAS)",
                  ["matrix", "matmuls/sample", "samples", "keras ms/matmul", "keras GFLOP/s", "numpy GFLOP/s",
                   "peak GFLOP/s"], rows, json_path=args.json, extra={"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
