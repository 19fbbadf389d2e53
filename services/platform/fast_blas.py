"""A fast BLAS under MLX on Linux, with nothing for the user to do.

The `mlx-cpu` wheel links the reference (netlib) BLAS: ~6 GFLOP/s for a float32 matmul where
OpenBLAS reaches ~200 on the same cores. PyPI's `scipy-openblas32` ships OpenBLAS with every symbol
prefixed (`scipy_cblas_sgemm`), so MLX cannot find it by itself. We compile a shim
(`native/strata_blas.c`) that defines the standard `cblas_sgemm`, `cblas_dgemm` and `cblas_cgemm` by
calling the prefixed ones (except for A * W^T, the linear layers' product, which it computes itself:
see the source), and preload it (LD_PRELOAD) into every strata process: `strata` re-executes itself once with
the shim preloaded (on x86-64 with OpenBLAS's Sandybridge kernels, whose row results do not depend on
the batch size: batching stays exact). `STRATA_BLAS=reference` keeps the bundled BLAS. Exactness is
unaffected as long as the reference run uses the same BLAS: tests give their services the test
process's choice.
"""

import ctypes
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

SHIM_NAME = "libstrata_blas.so"
_REEXEC_MARK = "STRATA_BLAS_REEXECUTED"

SHIM_SOURCE = Path(__file__).parent / "native" / "strata_blas.c"

BlasChoice = Literal["fast", "reference"]


class FastBlasUnavailableError(RuntimeError):
    """The shim cannot be built here; the message says what is missing."""


def shim_path() -> Path:
    """Where the shim lives: beside the interpreter's environment, built once by `make`."""
    return Path(sys.prefix) / "lib" / SHIM_NAME


def _openblas_directory() -> Path:
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or spec.origin is None:
        raise FastBlasUnavailableError("the PyPI package scipy-openblas32 is not installed")
    return Path(spec.origin).parent / "lib"


def build_shim(destination: Path | None = None) -> Path:
    """Compiles the shim with the machine's C compiler; returns its path."""
    target = destination or shim_path()
    openblas = _openblas_directory()
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FastBlasUnavailableError("no C compiler (cc or gcc) to build the BLAS shim")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".so.partial")
    # -ffp-contract=off: `alpha * dot + beta * c` stays two products and a sum in every code path (the
    # AVX2 and AVX-512 functions would otherwise be free to fuse it differently, changing bits).
    command = [
        compiler, "-shared", "-fPIC", "-O3", "-ffp-contract=off", "-pthread", str(SHIM_SOURCE), "-o", str(temporary),
        f"-L{openblas}", "-lscipy_openblas", f"-Wl,-rpath,{openblas}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FastBlasUnavailableError(f"building the BLAS shim failed: {result.stderr.strip()}")
    temporary.replace(target)
    return target


class BlasThreadControl:
    """Sets how many threads the preloaded OpenBLAS uses for the next calls (this process only)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._set = library.scipy_openblas_set_num_threads
        self._get = library.scipy_openblas_get_num_threads
        self._set.argtypes = [ctypes.c_int]
        self._set.restype = None
        self._get.argtypes = []
        self._get.restype = ctypes.c_int

    def set(self, threads: int) -> None:
        self._set(max(1, threads))

    def get(self) -> int:
        result: object = self._get()
        return result if isinstance(result, int) else 1


def strata_kernel_active() -> bool:
    """Whether the preloaded shim computes A * W^T with strata's kernel (AVX2 and FMA, not turned off)."""
    if not fast_blas_loaded():
        return False
    try:
        kernel = ctypes.CDLL(str(shim_path())).strata_sgemm_kernel
    except (OSError, AttributeError):
        return False
    kernel.restype = ctypes.c_int
    return kernel() == 1


def strata_kernel_width() -> int:
    """The vector width strata's kernel computes with: 512 (AVX-512), 256 (AVX2, or STRATA_KERNEL_ISA=avx2), 0 (off).

    Both widths give the same bits; the width only changes the speed.
    """
    if not strata_kernel_active():
        return 0
    try:
        width = ctypes.CDLL(str(shim_path())).strata_sgemm_kernel_width
    except AttributeError:
        return 256  # a shim built before the AVX-512 path
    width.restype = ctypes.c_int
    result: object = width()
    return result if isinstance(result, int) else 0


def blas_description() -> str:
    """What computes this process's float32 products, in words (for reports)."""
    if not fast_blas_loaded():
        return "MLX's bundled reference BLAS"
    if strata_kernel_active():
        return "strata's A * W^T kernel, OpenBLAS for the other products"
    return "OpenBLAS"


def blas_thread_control() -> BlasThreadControl | None:
    """Control over the OpenBLAS behind the shim, or None when this process computes without it."""
    if not fast_blas_loaded():
        return None
    try:
        # The same library the shim loaded: dlopen hands back the handle already in the process.
        return BlasThreadControl(ctypes.CDLL(str(_openblas_directory() / "libscipy_openblas.so")))
    except (OSError, AttributeError, FastBlasUnavailableError):
        return None


def requested_choice() -> BlasChoice:
    return "reference" if os.environ.get("STRATA_BLAS", "").lower() == "reference" else "fast"


def fast_blas_loaded() -> bool:
    """Whether this process runs with the shim preloaded."""
    return SHIM_NAME in os.environ.get("LD_PRELOAD", "") and _REEXEC_MARK in os.environ


def _environment_with_shim(shim: Path) -> dict[str, str]:
    preload = os.environ.get("LD_PRELOAD", "")
    environment = {**os.environ, _REEXEC_MARK: "1", "LD_PRELOAD": f"{shim}:{preload}" if preload else str(shim)}
    if platform.machine() in ("x86_64", "AMD64"):
        # OpenBLAS's AVX-512 and FMA kernels give row results that depend on how many rows share
        # the matmul (measured here); the Sandybridge kernels do not, and run as fast on these
        # memory-bound shapes. Shards still check invariance at load and fall back if it fails.
        environment.setdefault("OPENBLAS_CORETYPE", "Sandybridge")
    return environment


def reexecute_with_fast_blas(arguments: list[str]) -> None:
    """Replaces this process with itself under the shim, once; returns when that is not wanted or possible.

    `arguments` are the interpreter arguments that restart the same program (e.g. ["-m", "services.app.cli", ...]).
    """
    if not sys.platform.startswith("linux") or requested_choice() == "reference" or _REEXEC_MARK in os.environ:
        return
    shim = shim_path()
    if not shim.exists():
        print(
            f"strata: the fast BLAS shim is missing ({shim}); MLX uses its slow reference BLAS. "
            "Run `make setup` (or `python -m services.platform.fast_blas build`) to build it.",
            file=sys.stderr,
        )
        return
    os.execve(sys.executable, [sys.executable, *arguments], _environment_with_shim(shim))


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command == "build":
        try:
            print(build_shim())
        except FastBlasUnavailableError as error:
            print(f"strata: {error}; MLX will use its slow reference BLAS", file=sys.stderr)
        return 0
    if command == "path":
        print(shim_path())
        return 0
    if command == "run" and len(sys.argv) > 2:
        # Runs a command (e.g. the test suite) under the same BLAS as the services.
        program = sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:]
        shim = shim_path()
        use_shim = sys.platform.startswith("linux") and requested_choice() == "fast" and shim.exists()
        os.execvpe(program[0], program, _environment_with_shim(shim) if use_shim else dict(os.environ))
    print("usage: python -m services.platform.fast_blas [build | path | run -- COMMAND...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
