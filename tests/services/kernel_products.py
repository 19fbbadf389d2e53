"""Products of strata's A * W^T kernel on many shapes, written to a file (a child of test_strata_blas.py).

Run as `python -m tests.services.kernel_products OUT.npz` under the preloaded shim: the test runs it
with STRATA_KERNEL_ISA=avx2 and compares its products bitwise with its own (AVX-512 where the CPU has it).
"""

import sys

import mlx.core as mx
import numpy as np
import numpy.typing as npt

from services.platform.fast_blas import blas_thread_control, strata_kernel_width

# (columns, depth): odd and even column counts around the 8- and 2-column tiles, K with and without a tail.
SHAPES = ((1, 1), (2, 7), (3, 8), (7, 13), (9, 64), (17, 67), (33, 576), (130, 100))
ROW_COUNTS = tuple(range(1, 41))


def products() -> dict[str, npt.NDArray[np.float32]]:
    """Every shape at every row count, on 1 and 2 threads, plus a scaled product (alpha, beta)."""
    control = blas_thread_control()
    if control is None:
        raise SystemExit("the shim is not preloaded")
    results: dict[str, npt.NDArray[np.float32]] = {"width": np.array([strata_kernel_width()], dtype=np.float32)}
    for columns, depth in SHAPES:
        generator = np.random.default_rng(columns * 1000 + depth)
        weights = mx.array(generator.standard_normal((columns, depth), dtype=np.float32))
        rows = mx.array(generator.standard_normal((max(ROW_COUNTS), depth), dtype=np.float32))
        added = mx.array(generator.standard_normal((max(ROW_COUNTS), columns), dtype=np.float32))
        for threads in (1, 2):
            control.set(threads)
            for count in ROW_COUNTS:
                product = rows[:count] @ weights.T
                scaled = mx.addmm(added[:count], rows[:count], weights.T, alpha=0.75, beta=1.5)
                results[f"{columns}x{depth}/{threads}/{count}"] = np.asarray(product, dtype=np.float32)
                results[f"{columns}x{depth}/{threads}/{count}/scaled"] = np.asarray(scaled, dtype=np.float32)
    return results


def main() -> None:
    arrays = products()
    names = list(arrays)
    # Positional arrays and their names apart: savez's keyword form clashes with its own options in the stubs.
    np.savez(sys.argv[1], np.array(names), *(arrays[name] for name in names))


if __name__ == "__main__":
    main()
