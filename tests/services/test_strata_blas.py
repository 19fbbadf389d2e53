"""The BLAS preloaded under MLX (services/platform/native/strata_blas.c): strata's kernel for A * W^T.

Its row results must not depend on how many rows share a call, nor on the thread count: batching
and the thread policy rely on it. Everything else it forwards to OpenBLAS.
"""

import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
import numpy.typing as npt
import pytest

from services.platform.fast_blas import (
    BlasThreadControl,
    blas_description,
    blas_thread_control,
    fast_blas_loaded,
    strata_kernel_active,
    strata_kernel_width,
)
from tests.services.kernel_products import products

pytestmark = pytest.mark.native


def _cpu_has(flag: str) -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and any(
        line.startswith("flags") and flag in line.split() for line in cpuinfo.read_text().splitlines()
    )


def _numpy(array: mx.array) -> npt.NDArray[np.float32]:
    return np.asarray(array, dtype=np.float32)


@pytest.fixture(name="control")
def fixture_control() -> Iterator[BlasThreadControl]:
    if not fast_blas_loaded():
        pytest.skip("this process runs MLX's reference BLAS (STRATA_BLAS=reference)")
    control = blas_thread_control()
    assert control is not None
    before = control.get()
    yield control
    control.set(before)


def test_the_kernel_is_on_where_the_cpu_has_avx2_and_fma(control: BlasThreadControl) -> None:
    wanted = platform.machine() == "x86_64" and _cpu_has("avx2") and _cpu_has("fma")

    assert strata_kernel_active() == wanted
    assert blas_description() == ("strata's A * W^T kernel, OpenBLAS for the other products" if wanted else "OpenBLAS")


@pytest.mark.parametrize(("columns", "depth"), [(7, 13), (192, 64), (1536, 576)])
@pytest.mark.parametrize("threads", [1, 2])
def test_rows_do_not_depend_on_the_batch_or_the_threads(
    control: BlasThreadControl, columns: int, depth: int, threads: int
) -> None:
    generator = np.random.default_rng(columns + depth)
    weights = mx.array(generator.standard_normal((columns, depth), dtype=np.float32))
    rows = mx.array(generator.standard_normal((37, depth), dtype=np.float32))
    control.set(1)
    alone = [_numpy(rows[index : index + 1] @ weights.T) for index in range(37)]
    control.set(threads)
    exact = np.asarray(rows, dtype=np.float64) @ np.asarray(weights, dtype=np.float64).T

    for count in (2, 3, 5, 16, 37):
        together = _numpy(rows[:count] @ weights.T)
        for index in range(count):
            assert np.array_equal(together[index], alone[index][0]), (count, index)
        np.testing.assert_allclose(together, exact[:count], rtol=1e-4, atol=1e-4)


def test_scaled_products_and_other_layouts_stay_right(control: BlasThreadControl) -> None:
    control.set(2)
    generator = np.random.default_rng(7)
    a = generator.standard_normal((9, 40), dtype=np.float32)
    w = generator.standard_normal((11, 40), dtype=np.float32)
    c = generator.standard_normal((9, 11), dtype=np.float32)
    exact = a.astype(np.float64) @ w.T.astype(np.float64)

    scaled = mx.addmm(mx.array(c), mx.array(a), mx.array(w).T, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(_numpy(scaled), 0.5 * exact + 2.0 * c, rtol=1e-4, atol=1e-4)
    # A transposed, or W not: forwarded to OpenBLAS.
    from_columns = mx.array(np.ascontiguousarray(a.T)).T @ mx.array(w).T
    np.testing.assert_allclose(_numpy(from_columns), exact, rtol=1e-4, atol=1e-4)
    plain = mx.array(a) @ mx.array(np.ascontiguousarray(w.T))
    np.testing.assert_allclose(_numpy(plain), exact, rtol=1e-4, atol=1e-4)


@pytest.mark.process
@pytest.mark.timeout(600)
def test_avx512_and_avx2_give_the_same_bits(control: BlasThreadControl, tmp_path: Path) -> None:
    """The AVX-512 tiles (two columns per register) against the AVX2 ones, forced by STRATA_KERNEL_ISA=avx2."""
    if not strata_kernel_active():
        pytest.skip("strata's kernel does not run on this CPU (it needs x86-64 with AVX2 and FMA)")
    wide = _cpu_has("avx512f") and _cpu_has("avx512dq") and _cpu_has("avx512vl")
    assert strata_kernel_width() == (512 if wide else 256)
    narrow_file = tmp_path / "avx2.npz"
    child = subprocess.run(
        [sys.executable, "-m", "tests.services.kernel_products", str(narrow_file)],
        env={**os.environ, "STRATA_KERNEL_ISA": "avx2"},
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert child.returncode == 0, child.stderr

    ours = products()
    with np.load(narrow_file) as saved:
        names = [str(name) for name in saved["arr_0"]]
        narrow = {name: saved[f"arr_{index + 1}"] for index, name in enumerate(names)}
    assert narrow["width"][0] == 256
    assert set(narrow) == set(ours)
    for name in ours:
        if name != "width":
            assert np.array_equal(ours[name], narrow[name]), name
