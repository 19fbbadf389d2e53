"""Attention for every request of a batched step in one native call (float32, CPU).

`native/request_attention.cpp` performs, request by request, the arithmetic of MLX's CPU attention
(the same BLAS calls with the same arguments, MLX's softmax loop and `exp`), so one call replaces
~9 MLX ops per request and layer, whose scheduling costs far more than their arithmetic. `make`
compiles it beside the interpreter (like the BLAS shim); where there is no C++ compiler, or the
fast BLAS shim is not preloaded (the library finds `cblas_sgemm` through it), shards use MLX ops.
The shard compares both paths bitwise at load (`batched_forward.check_batch_invariance`) and uses
the native one only when they agree.
"""

import ctypes
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast

import mlx.core as mx
import numpy as np
import numpy.typing as npt
from mlx_lm.models.cache import KVCache
from typing_extensions import Buffer

from services.fast_blas import fast_blas_loaded
from services.mlx_typing import evaluate

LIBRARY_NAME = "libstrata_attention.so"
SOURCE = Path(__file__).parent / "native" / "request_attention.cpp"

logger = logging.getLogger(__name__)


class NativeAttentionUnavailableError(RuntimeError):
    """The library cannot be built here; the message says what is missing."""


def library_path() -> Path:
    """Where the library lives: beside the interpreter's environment, built by `make`."""
    return Path(sys.prefix) / "lib" / LIBRARY_NAME


def build_library(destination: Path | None = None) -> Path:
    """Compiles the library with the machine's C++ compiler against MLX's installed headers."""
    target = destination or library_path()
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise NativeAttentionUnavailableError("no C++ compiler (c++ or g++) to build the attention library")
    include = Path(mx.__file__).parent / "include"
    if not (include / "mlx" / "backend" / "cpu" / "simd" / "simd.h").is_file():
        raise NativeAttentionUnavailableError(f"MLX's C++ headers are not installed under {include}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".so.partial")
    # No -march and no contraction: the same float operations as MLX's own x86-64 baseline build.
    command = [
        compiler, "-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off",
        f"-I{include}", str(SOURCE), "-o", str(temporary),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise NativeAttentionUnavailableError(f"the C++ compiler {compiler} cannot run: {error}") from error
    if result.returncode != 0:
        raise NativeAttentionUnavailableError(f"building the attention library failed: {result.stderr.strip()}")
    temporary.replace(target)
    return target


def _float32_matrix_rows(array: mx.array, head_dim: int) -> tuple[int, int] | None:
    """(address, head stride in elements) of a contiguous float32 (1, heads, positions, head_dim) buffer.

    Through a memoryview (no copy, and ~4x cheaper than a numpy view's address); None for any
    other layout.
    """
    view = memoryview(cast(Buffer, array))  # MLX arrays export the buffer protocol
    shape, strides = view.shape, view.strides
    if shape is None or strides is None or view.format != "f" or len(shape) != 4 or shape[0] != 1:
        return None
    if strides[2:] != (head_dim * 4, 4):
        return None
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only or not contiguous
        return None
    return address, strides[1] // 4


class _Kernel(Protocol):
    def __call__(self, *arguments: object) -> int: ...


def _pointer(array: npt.NDArray[np.generic]) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def _host_view(array: mx.array) -> npt.NDArray[np.float32]:
    """The array's own memory (no copy); the array must be evaluated."""
    return cast(npt.NDArray[np.float32], np.array(array, copy=False))


class NativeAttention:
    """Calls the library (which keeps no state).

    `group_heads`: the query heads of one KV head share a matmul (fewer, larger BLAS calls); exact
    only where the BLAS's row results do not depend on the row count, so shards check it at load.
    """

    def __init__(self, library: ctypes.CDLL, group_heads: bool = False) -> None:
        self._library = library
        self._kernel = cast(_Kernel, library.strata_request_attention)
        self.group_heads = group_heads

    def grouped(self) -> "NativeAttention":
        """The same library with query heads grouped per KV head."""
        return NativeAttention(self._library, group_heads=True)

    def attend(
        self,
        queries: mx.array,
        caches: Sequence[KVCache],
        row_starts: Sequence[int],
        row_counts: Sequence[int],
        heads: int,
        kv_heads: int,
        scale: float,
    ) -> mx.array | None:
        """Attention of each request's rows over its (already updated) cache.

        queries: (rows, heads, 1, head_dim) float32 after RoPE -> (1, rows, heads * head_dim), or
        None when a layout is not the one the library reads (the caller then uses MLX ops).
        """
        rows, _, _, head_dim = queries.shape
        cache_arrays = [array for cache in caches for array in (cache.keys, cache.values) if array is not None]
        if len(cache_arrays) != 2 * len(caches):
            return None
        evaluate(queries, *cache_arrays)
        query_view = np.ascontiguousarray(_host_view(queries))
        addresses: list[int] = []
        head_strides: list[int] = []
        for array in cache_arrays:
            located = _float32_matrix_rows(array, head_dim)
            if located is None:
                return None
            addresses.append(located[0])
            head_strides.append(located[1])
        keys, values = addresses[0::2], addresses[1::2]
        key_strides, value_strides = head_strides[0::2], head_strides[1::2]
        output = np.empty((rows, heads, head_dim), dtype=np.float32)
        # Held in names until the call returns: the library reads them through raw pointers.
        integers = [
            np.asarray(row_starts, dtype=np.int32),
            np.asarray(row_counts, dtype=np.int32),
            np.asarray([cache.offset for cache in caches], dtype=np.int32),
        ]
        pointers = [np.asarray(keys, dtype=np.uint64), np.asarray(values, dtype=np.uint64)]
        strides = [np.asarray(key_strides, dtype=np.int64), np.asarray(value_strides, dtype=np.int64)]
        status = self._kernel(
            ctypes.c_int(len(caches)),
            *(_pointer(array) for array in integers),
            _pointer(pointers[0]),
            _pointer(strides[0]),
            _pointer(pointers[1]),
            _pointer(strides[1]),
            _pointer(query_view),
            _pointer(output),
            ctypes.c_int(heads),
            ctypes.c_int(kv_heads),
            ctypes.c_int(head_dim),
            ctypes.c_float(scale),
            ctypes.c_int(1 if self.group_heads else 0),
        )
        if status != 0:
            return None
        return mx.reshape(mx.array(output), (1, rows, heads * head_dim))


def load_native_attention() -> NativeAttention | None:
    """The library when it is built and its BLAS symbol resolves to the preloaded fast BLAS."""
    path = library_path()
    if not path.is_file() or not fast_blas_loaded():
        return None
    try:
        return NativeAttention(ctypes.CDLL(str(path)))
    except OSError as error:
        logger.warning("the native attention library at %s does not load (%s); using MLX ops", path, error)
        return None


def main() -> int:
    """`python -m shard_server.native_attention build`: what `make` runs."""
    if sys.argv[1:] != ["build"]:
        print("usage: python -m shard_server.native_attention build", file=sys.stderr)
        return 2
    try:
        print(f"built {build_library()}")
    except NativeAttentionUnavailableError as error:
        # Not fatal: shards then run attention through MLX ops (exact, slower with many requests).
        print(f"note: {error}; shards will run attention through MLX ops", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
