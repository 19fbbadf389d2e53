"""float32 weights held in half the bytes: linear layers and the LM head with float16 weights, same results.

A stage that computes in float32 holds every weight in float32, and each decode step reads them all:
memory traffic, not arithmetic, bounds a step on CPU. Every float32 weight of a model dequantized
from 4-bit codes with float16 scales (the embedded SmolLM2) is exactly a float16 value, so holding
it as float16 loses nothing, provided the product is computed exactly as before. The extension
`native/float16_linear/` (an MLX primitive, built by `make` with cmake and nanobind) does that: it
widens each float16 weight to float32 in registers and runs the arithmetic of the preloaded BLAS
shim's A * W^T kernel, element by element (`services/platform/native/strata_blas.c`).

`hold_weights_in_float16` swaps each eligible `nn.Linear` and `nn.Embedding` of a loaded stage for a
twin holding its quantized codes (`weight_codes.py`, with STRATA_WEIGHT_CODES=on) or its float16
values, and keeps the swap only where the twin's output equals the float32 module's
bitwise on test inputs (checked at load, as the native attention is); any other module keeps its
float32 weights, with a log line saying why. Off where the shim's kernel does not compute the
float32 path (then the two paths are different arithmetic), on CPUs without AVX2/FMA/F16C, where the
extension is not built, and with `STRATA_FLOAT16_WEIGHTS=off`.
"""

import importlib.machinery
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import mlx.core as mx
from mlx import nn

from services.platform.fast_blas import strata_kernel_active
from services.platform.mlx_typing import evaluate
from shard_server.compact_linear import CompactLinear, Float16LinearLibrary, lookups_equal, same_results
from shard_server.weight_codes import StoredCodes, codes_twin

MODULE_NAME = "strata_float16_linear"
SOURCE_DIRECTORY = Path(__file__).parent / "native" / "float16_linear"
SWITCH_VARIABLE = "STRATA_FLOAT16_WEIGHTS"
"""`off` (or `0`, `false`, `no`) keeps every weight in float32."""
CODES_SWITCH_VARIABLE = "STRATA_WEIGHT_CODES"
"""`on` keeps a quantized model's 4- or 8-bit codes (~0.18x float32's bytes for the embedded model);
default off: rebuilding each weight from its code costs more than reading float16 with many rows
(whole-model decode steps on a Zen 4 with AVX-512, codes/float16: about 1.0x at 1 row, 1.2x at 4,
1.1x at 16, 1.05x at 32; README; more on AVX2), so codes are for hosts short of memory."""

logger = logging.getLogger(__name__)


class Float16WeightsUnavailableError(RuntimeError):
    """The extension cannot be built here; the message says what is missing."""


def extension_path() -> Path:
    """Where the extension lives: beside the interpreter's environment, built by `make` (loaded by path)."""
    return Path(sys.prefix) / "lib" / f"{MODULE_NAME}.so"


def build_extension(destination: Path | None = None) -> Path:
    """Configures and builds the extension with cmake (one job) against the installed MLX and nanobind."""
    target = destination or extension_path()
    cmake = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if cmake is None:
        raise Float16WeightsUnavailableError("cmake is not installed (needed to build the float16 linear layer)")
    if shutil.which(os.environ.get("CXX") or "c++") is None and shutil.which("g++") is None:
        raise Float16WeightsUnavailableError("no C++ compiler (c++ or g++) to build the float16 linear layer")
    nanobind_spec = importlib.util.find_spec("nanobind")
    if nanobind_spec is None or nanobind_spec.origin is None:
        raise Float16WeightsUnavailableError("the PyPI package nanobind is not installed")
    nanobind_cmake = Path(nanobind_spec.origin).parent / "cmake"
    mlx_cmake = Path(mx.__file__).parent / "share" / "cmake" / "MLX"
    if not (mlx_cmake / "MLXConfig.cmake").is_file():
        raise Float16WeightsUnavailableError(f"MLX's cmake package is not installed under {mlx_cmake}")
    with tempfile.TemporaryDirectory(prefix="strata-float16-linear-") as build_directory:
        steps = [
            [
                cmake, "-S", str(SOURCE_DIRECTORY), "-B", build_directory, "-DCMAKE_BUILD_TYPE=Release",
                f"-DPython_EXECUTABLE={sys.executable}", f"-DMLX_DIR={mlx_cmake}", f"-Dnanobind_DIR={nanobind_cmake}",
            ],
            [cmake, "--build", build_directory, "--parallel", "1"],
        ]  # fmt: skip
        for step in steps:
            try:
                result = subprocess.run(step, capture_output=True, text=True, check=False)
            except OSError as error:
                raise Float16WeightsUnavailableError(f"cmake cannot run: {error}") from error
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip()[-2000:]
                raise Float16WeightsUnavailableError(f"building the float16 linear layer failed: {output}")
        built = sorted(Path(build_directory).glob(f"{MODULE_NAME}*.so"))
        if not built:
            raise Float16WeightsUnavailableError("the cmake build produced no extension module")
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(".partial")
        shutil.copyfile(built[0], temporary)
        temporary.replace(target)
    return target


def load_extension(path: Path | None = None) -> Float16LinearLibrary | None:
    """The built extension, or None (with the reason logged) where it is absent or does not load."""
    location = path or extension_path()
    if not location.is_file():
        return None
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(location))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, location, loader=loader)
    if spec is None:
        return None
    try:
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except ImportError as error:
        logger.warning("the float16 linear extension at %s does not load (%s); weights stay float32", location, error)
        return None
    return cast(Float16LinearLibrary, module)


def switched_off(environment: dict[str, str] | None = None, variable: str = SWITCH_VARIABLE) -> bool:
    value = (environment if environment is not None else dict(os.environ)).get(variable, "")
    return value.strip().lower() in ("off", "0", "false", "no")


def switched_on(variable: str, environment: dict[str, str] | None = None) -> bool:
    value = (environment if environment is not None else dict(os.environ)).get(variable, "")
    return value.strip().lower() in ("on", "1", "true", "yes")


class Float16Linear(CompactLinear):
    """`nn.Linear` with its weight held as float16: float32 in, float32 out, the float32 arithmetic."""

    def __init__(self, library: Float16LinearLibrary, weight: mx.array, bias: mx.array | None) -> None:
        super().__init__()
        self._library = library
        self.weight = weight  # (out, in) float16
        if bias is not None:
            self.bias = bias  # (out,) float32

    def __call__(self, x: mx.array) -> mx.array:
        bias = cast(mx.array, self["bias"]) if "bias" in self else None
        return self._library.float16_linear(x, cast(mx.array, self["weight"]), bias)


class Float16Embedding(nn.Module):
    """`nn.Embedding` with its table held as float16: looked-up rows and the tied LM head in float32."""

    def __init__(self, library: Float16LinearLibrary, weight: mx.array) -> None:
        super().__init__()
        self._library = library
        self.weight = weight  # (vocabulary, hidden) float16

    def __call__(self, x: mx.array) -> mx.array:
        return cast(mx.array, self["weight"])[x].astype(mx.float32)  # widening is exact

    def as_linear(self, x: mx.array) -> mx.array:
        return self._library.float16_linear(x, cast(mx.array, self["weight"]))


@dataclass(frozen=True)
class WeightStorage:
    """What the load did: modules now holding their codes or float16 values, those kept in float32 and why."""

    float16_modules: tuple[str, ...]
    float32_modules: tuple[tuple[str, str], ...]
    reason: str
    """Why no module was swapped at all (empty when some were)."""
    code_modules: tuple[str, ...] = ()
    """Modules holding the 4- or 8-bit codes their float32 weights were dequantized from."""

    @property
    def compact(self) -> bool:
        """Whether any weight matrix is held in fewer bytes than float32."""
        return bool(self.float16_modules or self.code_modules)

    def describe(self) -> str:
        if not self.compact:
            return f"weights in float32 ({self.reason})"
        parts = [f"{len(self.code_modules)} as their quantized codes"] if self.code_modules else []
        parts += [f"{len(self.float16_modules)} in float16"] if self.float16_modules else []
        parts += [f"{len(self.float32_modules)} kept in float32"] if self.float32_modules else []
        return f"weight matrices {', '.join(parts)} (checked bitwise against float32)"


def _float16_exact(weight: mx.array) -> mx.array | None:
    """The weight as float16 when every value is exactly a float16 value (no NaN: NaN != NaN)."""
    if weight.dtype != mx.float32 or weight.ndim != 2:
        return None
    halved = weight.astype(mx.float16)
    return halved if mx.array_equal(halved.astype(mx.float32), weight).item() else None


def _twin(library: Float16LinearLibrary, module: nn.Module) -> tuple[nn.Module | None, str]:
    """A float16-weight twin of a float32 Linear or Embedding checked bitwise, or None and why not."""
    weight = cast(mx.array, module["weight"])
    halved = _float16_exact(weight)
    if halved is None:
        return None, "its weights are not all float16 values"
    evaluate(halved)
    if type(module) is nn.Embedding:
        embedding = Float16Embedding(library, halved)
        lookup_equal = lookups_equal(module, embedding, weight.shape[0])
        as_linear = cast(Callable[[mx.array], mx.array], module.as_linear)
        if not lookup_equal or not same_results(as_linear, embedding.as_linear, weight.shape[1]):
            return None, "its float16 product differs from the float32 one here"
        return embedding, ""
    bias = cast(mx.array, module["bias"]) if "bias" in module else None
    if bias is not None and bias.dtype != mx.float32:
        return None, "its bias is not float32"
    linear = Float16Linear(library, halved, bias)
    if not same_results(cast(Callable[[mx.array], mx.array], module), linear, weight.shape[1]):
        return None, "its float16 product differs from the float32 one here"
    return linear, ""


def set_module(root: nn.Module, path: str, replacement: nn.Module) -> None:
    """root's submodule at a dotted path (list items by index) becomes `replacement`."""
    *parents, last = path.split(".")
    node: object = root
    for name in parents:
        node = cast(object, node[name]) if isinstance(node, nn.Module) else cast(list[object], node)[int(name)]
    if isinstance(node, nn.Module):
        node[last] = replacement
    else:
        cast(list[object], node)[int(last)] = replacement


def hold_weights_in_float16(
    model: nn.Module, library: Float16LinearLibrary | None = None, codes: Mapping[str, StoredCodes] | None = None
) -> WeightStorage:
    """Swaps the model's float32 Linear and Embedding modules for checked compact twins (in place).

    `codes`: the quantized codes the model was dequantized from (`weight_codes.stored_codes` before
    conversion); a module found there keeps them where their product is bitwise the float32 one, else
    it tries float16. `library`: the extension (default: the one `make` built). The float32 path must
    be the BLAS shim's kernel (the arithmetic the extension reproduces); else nothing changes.
    """
    if switched_off():
        return WeightStorage((), (), f"{SWITCH_VARIABLE}=off")
    if library is None:
        if not strata_kernel_active():
            return WeightStorage((), (), "float32 products do not run on strata's BLAS kernel in this process")
        library = load_extension()
        if library is None:
            return WeightStorage((), (), f"the float16 linear extension is not built ({extension_path()})")
    if not library.kernel_available():
        return WeightStorage((), (), "this CPU lacks AVX2, FMA or F16C")
    usable_codes = dict(codes) if codes is not None and switched_on(CODES_SWITCH_VARIABLE) else {}
    in_codes: list[str] = []
    codes_refused: list[str] = []
    converted: list[str] = []
    kept: list[tuple[str, str]] = []
    named = cast(Callable[[], list[tuple[str, nn.Module]]], model.named_modules)()
    candidates = [(path, module) for path, module in named if type(module) in (nn.Linear, nn.Embedding)]
    for path, module in candidates:
        stored = usable_codes.get(path)
        if stored is not None:
            with_codes = codes_twin(library, module, stored)
            if with_codes is not None:
                set_module(model, path, with_codes)
                in_codes.append(path)
                continue
            codes_refused.append(path)
        twin, reason = _twin(library, module)
        if twin is None:
            kept.append((path, reason))
            continue
        set_module(model, path, twin)
        converted.append(path)
    evaluate(model.parameters())
    # One line per reason, not per module: a bfloat16 model would otherwise log every matrix.
    if codes_refused:
        logger.warning(
            "%d weight matrices do not keep their codes (their product differs from the float32 one here), e.g. %s",
            len(codes_refused),
            codes_refused[0],
        )
    for reason in sorted({reason for _, reason in kept}):
        paths = [path for path, why in kept if why == reason]
        logger.warning("%d weight matrices keep float32 weights (%s), e.g. %s", len(paths), reason, paths[0])
    reason = "" if converted or in_codes else "no module passed the check"
    return WeightStorage(tuple(converted), tuple(kept), reason, tuple(in_codes))


def main() -> int:
    """`python -m shard_server.float16_weights build`: what `make` runs."""
    if sys.argv[1:] != ["build"]:
        print("usage: python -m shard_server.float16_weights build", file=sys.stderr)
        return 2
    try:
        print(f"built {build_extension()}")
    except Float16WeightsUnavailableError as error:
        # Not fatal: shards then hold float32 weights (exact, twice the bytes).
        print(f"note: {error}; shards will hold float32 weights", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
