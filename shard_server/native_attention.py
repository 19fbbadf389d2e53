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

from services.platform.fast_blas import fast_blas_loaded
from services.platform.mlx_typing import evaluate

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
    `threads`: how many threads share a call's requests (each request wholly on one thread, so the
    count never changes a result); the stage worker sets it to the BLAS thread count of each batch.
    """

    def __init__(self, library: ctypes.CDLL, group_heads: bool = False, threads: int = 1) -> None:
        self._library = library
        self._kernel = cast(_Kernel, library.strata_request_attention)
        self.group_heads = group_heads
        self._threads = max(1, threads)

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, threads: int) -> None:
        self._threads = max(1, threads)

    def grouped(self) -> "NativeAttention":
        """The same library with query heads grouped per KV head."""
        return NativeAttention(self._library, group_heads=True, threads=self.threads)

    def attend(
        self,
        queries: mx.array,
        new_keys: mx.array,
        new_values: mx.array,
        caches: Sequence[KVCache],
        row_starts: Sequence[int],
        row_counts: Sequence[int],
        scale: float,
    ) -> mx.array | None:
        """Appends each request's new rows to its cache, then its attention over that cache.

        queries: (rows, heads, 1, head_dim), new_keys and new_values: (rows, kv_heads, 1, head_dim),
        float32 after RoPE -> (1, rows, heads * head_dim). A cache with room takes its rows in place
        (in the library); one that must grow goes through `KVCache.update_and_fetch`. None, with no
        cache changed, when a layout is not the one the library reads (the caller then uses MLX ops).
        """
        rows, heads, _, head_dim = queries.shape
        kv_heads = new_keys.shape[1]
        if any(array.dtype != mx.float32 for array in (queries, new_keys, new_values)):
            return None
        in_place = [
            cache.keys is not None and cache.offset + length <= cache.keys.shape[2]
            for cache, length in zip(caches, row_counts, strict=True)
        ]
        kept = [cache for cache, room in zip(caches, in_place, strict=True) if room]
        evaluate(queries, new_keys, new_values, *[array for cache in kept for array in (cache.keys, cache.values)])
        located: dict[int, tuple[int, int, int, int]] = {}
        for index, cache in enumerate(caches):
            if in_place[index] and (found := _locate(cache, head_dim)) is not None:
                located[index] = found
            elif in_place[index]:
                return None
        # From here on caches change: growing ones through MLX (fresh contiguous buffers), the rest in place.
        grown: list[int] = []
        for index, (cache, start, length) in enumerate(zip(caches, row_starts, row_counts, strict=True)):
            if not in_place[index]:
                cache.update_and_fetch(
                    request_rows_view(new_keys, start, length), request_rows_view(new_values, start, length)
                )
                grown.append(index)
        evaluate(*[array for index in grown for array in (caches[index].keys, caches[index].values)])
        for index in grown:
            found = _locate(caches[index], head_dim)
            if found is None:
                raise RuntimeError("a grown KV cache is not a contiguous float32 buffer")
            located[index] = found
        for index, cache in enumerate(caches):
            if in_place[index]:
                cache.offset += row_counts[index]
        order = range(len(caches))
        output = np.empty((rows, heads, head_dim), dtype=np.float32)
        # Held in names until the call returns: the library reads them through raw pointers.
        held = [
            np.asarray(row_starts, dtype=np.int32),
            np.asarray(row_counts, dtype=np.int32),
            np.asarray([cache.offset for cache in caches], dtype=np.int32),
            np.asarray([located[index][0] for index in order], dtype=np.uint64),
            np.asarray([located[index][1] for index in order], dtype=np.int64),
            np.asarray([located[index][2] for index in order], dtype=np.uint64),
            np.asarray([located[index][3] for index in order], dtype=np.int64),
            np.ascontiguousarray(_host_view(queries)),
            np.ascontiguousarray(_host_view(new_keys)),
            np.ascontiguousarray(_host_view(new_values)),
            np.asarray(in_place, dtype=np.int32),
            output,
        ]
        status = self._kernel(
            ctypes.c_int(len(caches)),
            *(_pointer(array) for array in held),
            ctypes.c_int(heads),
            ctypes.c_int(kv_heads),
            ctypes.c_int(head_dim),
            ctypes.c_float(scale),
            ctypes.c_int(1 if self.group_heads else 0),
            ctypes.c_int(self.threads),
        )
        if status != 0:
            raise RuntimeError(f"the native attention refused a step of {len(caches)} requests ({status})")
        return mx.reshape(mx.array(output), (1, rows, heads * head_dim))


def request_rows_view(per_row: mx.array, start: int, length: int) -> mx.array:
    """Rows [start, start + length) of (rows, heads, 1, head_dim) as (1, heads, length, head_dim)."""
    return mx.transpose(per_row[start : start + length], (2, 1, 0, 3))


def _locate(cache: KVCache, head_dim: int) -> tuple[int, int, int, int] | None:
    """Addresses and head strides of the cache's key and value buffers, if the library can read them."""
    if cache.keys is None or cache.values is None:
        return None
    keys = _float32_matrix_rows(cache.keys, head_dim)
    values = _float32_matrix_rows(cache.values, head_dim)
    if keys is None or values is None:
        return None
    return keys[0], keys[1], values[0], values[1]


def load_native_attention() -> NativeAttention | None:
    """The library when it is built and its BLAS symbol resolves to the preloaded fast BLAS, on the CPU
    only (it reads arrays in host memory: a GPU computes attention with MLX's own kernels)."""
    if mx.default_device() != mx.cpu:
        return None
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
