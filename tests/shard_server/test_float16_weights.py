"""float16-held weights give the float32 path's results bitwise, or are not used (shard_server/float16_weights.py)."""

import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
import pytest
from mlx import nn

from services.kernel.ids import ModelId
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_store import ModelStore
from services.platform.fast_blas import blas_thread_control, strata_kernel_active
from services.platform.mlx_compute import convert_module
from services.platform.mlx_typing import quantize_module, start_evaluating
from shard_server.compact_linear import Float16LinearLibrary
from shard_server.float16_weights import (
    CODES_SWITCH_VARIABLE,
    SWITCH_VARIABLE,
    Float16Embedding,
    Float16Linear,
    Float16WeightsUnavailableError,
    build_extension,
    hold_weights_in_float16,
    load_extension,
    switched_off,
    switched_on,
)
from shard_server.model_stage import ModelStage, StageRange
from shard_server.weight_codes import StoredCodes, stored_codes
from tests.shard_server.stage_runs import prefill_and_decode, stages_switched
from tests.tiny_architectures import ARCHITECTURE_CONFIGS, NUM_LAYERS, build_tiny_half_model, build_tiny_model

# (outputs, inputs): the embedded model's projections, MLP and LM head shapes, and odd ones (K % 8 != 0,
# N % 4 != 0) that take the kernel's tails.
SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49, 19), (3, 5), (1001, 577), (4, 8)]


def _require_extension() -> Float16LinearLibrary:
    library = load_extension()
    reason = ""
    if library is None:
        reason = "the float16 linear extension is not built (make builds it)"
    elif not strata_kernel_active():
        reason = "the BLAS shim's kernel is not preloaded (run under `python -m services.platform.fast_blas run`)"
    elif not library.kernel_available():
        reason = "this CPU lacks AVX2, FMA or F16C"
    if library is None or reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: this test must run)")
        pytest.skip(reason)
    return library


def _half_values(shape: tuple[int, ...], seed: int) -> mx.array:
    """float32 values that are all float16 values, as the embedded model's dequantized weights are."""
    return (mx.random.normal(shape, key=mx.random.key(seed)) * 0.05).astype(mx.float16)


@pytest.mark.native
@pytest.mark.parametrize("threads", [1, 2])
# 4 and 5 rows: a panel filled by its only tile; 7, 16, 32: filled, then read; 49 and 100: more than one
# row block (48), each refilling the panel; 1: the weights read in registers.
@pytest.mark.parametrize("rows", [1, 4, 5, 7, 16, 32, 49, 100])
def test_the_product_equals_the_float32_product_bitwise(rows: int, threads: int) -> None:
    library = _require_extension()
    control = blas_thread_control()
    assert control is not None
    previous = control.get()
    control.set(threads)
    try:
        for outputs, inputs in SHAPES:
            weight = _half_values((outputs, inputs), outputs * inputs)
            bias = mx.random.normal((outputs,), key=mx.random.key(outputs))
            x = mx.random.normal((1, rows, inputs), key=mx.random.key(rows + inputs))
            widened = weight.astype(mx.float32)
            assert mx.array_equal(library.float16_linear(x, weight), x @ widened.T).item(), (outputs, inputs)
            with_bias = library.float16_linear(x, weight, bias)
            assert mx.array_equal(with_bias, mx.addmm(bias, x, widened.T)).item(), (outputs, inputs)
            flat = x[0]  # (rows, inputs): any leading axes
            assert mx.array_equal(library.float16_linear(flat, weight), flat @ widened.T).item()
    finally:
        control.set(previous)


@pytest.mark.native
@pytest.mark.parametrize("bits", [4, 8])
# 4 and 5 rows: a panel filled by its only tile; 7, 16, 32: filled, then read; 49 and 100: more than one
# row block (48), each refilling the panel; 1: the weights read in registers.
@pytest.mark.parametrize("rows", [1, 4, 5, 7, 16, 32, 49, 100])
def test_the_codes_product_equals_the_float32_product_of_their_dequantized_weights_bitwise(
    rows: int, bits: int
) -> None:
    library = _require_extension()
    for outputs, inputs in [(576, 576), (192, 576), (1536, 576), (576, 1536), (49, 64), (1001, 96)]:
        codes, scales, biases = mx.quantize(_half_values((outputs, inputs), outputs + inputs), group_size=32, bits=bits)
        # The float32 path: MLX's float16 dequantization, widened (what convert_module gives a stage).
        widened = mx.dequantize(codes, scales, biases, group_size=32, bits=bits).astype(mx.float32)
        bias = mx.random.normal((outputs,), key=mx.random.key(outputs))
        x = mx.random.normal((1, rows, inputs), key=mx.random.key(rows + inputs))
        product = library.quantized_codes_linear(x, codes, scales, biases, 32, bits)
        assert mx.array_equal(product, x @ widened.T).item(), (outputs, inputs)
        with_bias = library.quantized_codes_linear(x, codes, scales, biases, 32, bits, bias)
        assert mx.array_equal(with_bias, mx.addmm(bias, x, widened.T)).item(), (outputs, inputs)


@pytest.mark.native
def test_it_computes_inside_compile_and_async_eval_and_on_strided_inputs() -> None:
    library = _require_extension()
    weight = _half_values((96, 64), 1)
    x = mx.random.normal((1, 5, 64), key=mx.random.key(2))
    expected = x @ weight.astype(mx.float32).T

    def layer(inputs: mx.array) -> mx.array:
        return library.float16_linear(inputs, weight) * 2.0

    assert mx.array_equal(mx.compile(layer)(x), expected * 2.0).item()
    shapeless = mx.compile(layer, shapeless=True)
    for rows in (3, 9):
        assert mx.array_equal(shapeless(x[:, :rows]), expected[:, :rows] * 2.0).item()
    started = library.float16_linear(x, weight)
    start_evaluating(started)
    assert mx.array_equal(started, expected).item()
    # A transposed view is made contiguous first. (MLX hands such a view to BLAS as transposed A, which
    # the shim leaves to OpenBLAS; a stage's linear layers only ever see contiguous rows.)
    transposed = mx.transpose(mx.random.normal((64, 5), key=mx.random.key(3)))
    expected = mx.contiguous(transposed) @ weight.astype(mx.float32).T
    assert mx.array_equal(library.float16_linear(transposed, weight), expected).item()


@pytest.mark.native
def test_bad_input_is_a_clear_value_error() -> None:
    library = _require_extension()
    weight = _half_values((8, 16), 4)
    x = mx.zeros((2, 16))
    with pytest.raises(ValueError, match="x must be float32"):
        library.float16_linear(x.astype(mx.float16), weight)
    with pytest.raises(ValueError, match="float16 \\(out, in\\) matrix"):
        library.float16_linear(x, weight.astype(mx.float32))
    with pytest.raises(ValueError, match="must match the weight's input size"):
        library.float16_linear(mx.zeros((2, 15)), weight)
    with pytest.raises(ValueError, match="one value per output"):
        library.float16_linear(x, weight, mx.zeros((7,)))


@pytest.mark.native
def test_bad_codes_are_a_clear_value_error() -> None:
    library = _require_extension()
    codes, scales, biases = mx.quantize(_half_values((8, 64), 5), group_size=32, bits=4)
    x = mx.zeros((2, 64))
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        library.quantized_codes_linear(x, codes, scales, biases, 32, 3)
    with pytest.raises(ValueError, match="positive multiple of 8"):
        library.quantized_codes_linear(x, codes, scales, biases, 12, 4)
    with pytest.raises(ValueError, match="uint32"):
        library.quantized_codes_linear(x, codes.astype(mx.int32), scales, biases, 32, 4)
    with pytest.raises(ValueError, match="one per group"):
        library.quantized_codes_linear(x, codes, scales.astype(mx.float32), biases, 32, 4)
    with pytest.raises(ValueError, match="must match the weight's input size"):
        library.quantized_codes_linear(mx.zeros((2, 63)), codes, scales, biases, 32, 4)


@pytest.mark.native
@pytest.mark.model
def test_the_embedded_model_keeps_its_codes_in_under_a_third_of_the_bytes_with_the_same_logits(
    embedded_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_extension()
    monkeypatch.setenv(CODES_SWITCH_VARIABLE, "on")
    model_dir = ModelStore(embedded_models).model_dir(EMBEDDED_MODEL_ID)
    compact, full = stages_switched(model_dir, StageRange(0, 30, 30), monkeypatch, SWITCH_VARIABLE)
    assert compact.weight_storage.code_modules and not compact.weight_storage.float16_modules
    assert not compact.weight_storage.float32_modules
    assert not full.weight_storage.compact
    assert compact.weight_bytes / full.weight_bytes < 0.3  # 4-bit layers, an 8-bit embedding (the tied head)
    assert mx.array_equal(prefill_and_decode(compact), prefill_and_decode(full)).item()


@pytest.mark.native
@pytest.mark.model
def test_by_default_the_embedded_model_holds_float16_in_half_the_bytes(
    embedded_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_extension()
    monkeypatch.delenv(CODES_SWITCH_VARIABLE, raising=False)
    model_dir = ModelStore(embedded_models).model_dir(EMBEDDED_MODEL_ID)
    # The last stage: the tied head.
    half, full = stages_switched(model_dir, StageRange(15, 30, 30), monkeypatch, SWITCH_VARIABLE)
    assert half.weight_storage.float16_modules and not half.weight_storage.code_modules
    # Every matrix halves; only the norms' vectors stay float32.
    assert 0.49 < half.weight_bytes / full.weight_bytes < 0.51
    assert mx.array_equal(prefill_and_decode(half), prefill_and_decode(full)).item()


@pytest.mark.native
@pytest.mark.parametrize(("start", "end"), [(0, NUM_LAYERS), (0, 3), (3, NUM_LAYERS)])
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # qwen2: q/k/v biases and a tied LM head
def test_a_tiny_model_with_half_values_swaps_every_matrix_and_stays_exact(
    model_type: str, start: int, end: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_extension()
    store = ModelStore(tmp_path / "models")
    model_dir = build_tiny_half_model(model_type, tmp_path / "random", store.model_dir(ModelId(f"tiny-{model_type}")))
    half, full = stages_switched(model_dir, StageRange(start, end, NUM_LAYERS), monkeypatch, SWITCH_VARIABLE)
    assert half.weight_storage.compact and not half.weight_storage.float32_modules
    assert half.weight_bytes < 0.55 * full.weight_bytes
    assert mx.array_equal(prefill_and_decode(half), prefill_and_decode(full)).item()


@pytest.mark.native
def test_weights_that_are_not_float16_values_keep_float32_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _require_extension()
    model_dir = build_tiny_model("llama", ModelStore(tmp_path).model_dir(ModelId("tiny-llama")))  # random float32
    with caplog.at_level(logging.WARNING, logger="shard_server.float16_weights"):
        stage = ModelStage(model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS), "float32")
    assert not stage.weight_storage.compact
    assert {reason for _, reason in stage.weight_storage.float32_modules} == {"its weights are not all float16 values"}
    assert "keep float32 weights (its weights are not all float16 values)" in caplog.text
    assert stage.weight_storage.reason == "no module passed the check"


class _OffByOneUlp:
    """The real extension, then one more rounding: a kernel whose arithmetic differs from the float32 path."""

    def __init__(self, library: Float16LinearLibrary) -> None:
        self._library = library

    def float16_linear(self, x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
        return self._library.float16_linear(x, weight, bias) * (1.0 + 2.0**-20)

    def quantized_codes_linear(
        self,
        x: mx.array,
        codes: mx.array,
        scales: mx.array,
        biases: mx.array,
        group_size: int,
        bits: int,
        bias: mx.array | None = None,
    ) -> mx.array:
        product = self._library.quantized_codes_linear(x, codes, scales, biases, group_size, bits, bias)
        return product * (1.0 + 2.0**-20)

    def kernel_available(self) -> bool:
        return True

    def kernel_width(self) -> int:
        return self._library.kernel_width()


class _HalfValuedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(40, 24)
        self.projection = nn.Linear(24, 12)
        for module in (self.embedding, self.projection):
            module.weight = module.weight.astype(mx.float16).astype(mx.float32)

    def __call__(self, tokens: mx.array) -> mx.array:
        return self.projection(self.embedding(tokens))


@pytest.mark.native
def test_a_kernel_whose_results_differ_is_refused_at_load(caplog: pytest.LogCaptureFixture) -> None:
    library = _require_extension()
    model = _HalfValuedModel()
    tokens = mx.array([[1, 2, 3]])
    before = model(tokens)
    with caplog.at_level(logging.WARNING, logger="shard_server.float16_weights"):
        storage = hold_weights_in_float16(model, _OffByOneUlp(library))
    assert not storage.compact
    assert storage.reason == "no module passed the check"
    assert "differs from the float32 one here" in caplog.text
    assert type(model.projection) is nn.Linear and type(model.embedding) is nn.Embedding
    assert mx.array_equal(model(tokens), before).item()
    # The real extension passes the same check on the same modules.
    storage = hold_weights_in_float16(model, library)
    assert set(storage.float16_modules) == {"embedding", "projection"}
    assert isinstance(model.projection, Float16Linear) and isinstance(model.embedding, Float16Embedding)
    assert mx.array_equal(model(tokens), before).item()


@pytest.mark.unit
def test_the_switch_turns_it_off_before_anything_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("off", "0", "false", "NO"):
        assert switched_off({SWITCH_VARIABLE: value})
    for value in ("", "on", "1"):
        assert not switched_off({SWITCH_VARIABLE: value})
    # The codes are opt-in: only an explicit yes turns them on.
    assert switched_on(CODES_SWITCH_VARIABLE, {CODES_SWITCH_VARIABLE: "On"})
    for value in ("", "off", "maybe"):
        assert not switched_on(CODES_SWITCH_VARIABLE, {CODES_SWITCH_VARIABLE: value})
    monkeypatch.setenv(SWITCH_VARIABLE, "off")
    model = _HalfValuedModel()
    storage = hold_weights_in_float16(model)
    assert storage.reason == f"{SWITCH_VARIABLE}=off"
    assert type(model.projection) is nn.Linear


@pytest.mark.unit
def test_a_missing_extension_loads_as_none(tmp_path: Path) -> None:
    assert load_extension(tmp_path / "strata_float16_linear.so") is None


@pytest.mark.process
def test_a_missing_cmake_is_a_clear_error_and_not_a_failed_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    target = tmp_path / "strata_float16_linear.so"
    with pytest.raises(Float16WeightsUnavailableError, match="cmake is not installed"):
        build_extension(target)
    assert not target.exists()
    result = subprocess.run(
        [sys.executable, "-m", "shard_server.float16_weights", "build"],
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0
    assert "shards will hold float32 weights" in result.stderr


def _cpu_has_avx512() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    no_flags: list[str] = []
    flags = next((line.split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), no_flags)
    return all(flag in flags for flag in ("avx512f", "avx512dq", "avx512vl", "avx512bw"))


@pytest.mark.native
def test_the_kernel_computes_with_the_widest_vectors_the_cpu_has_unless_told_avx2() -> None:
    library = _require_extension()
    forced = os.environ.get("STRATA_KERNEL_ISA") == "avx2"
    assert library.kernel_width() == (512 if _cpu_has_avx512() and not forced else 256)


@pytest.mark.native
@pytest.mark.process
@pytest.mark.timeout(900)
def test_with_avx2_forced_the_products_still_equal_the_float32_ones_bitwise() -> None:
    """Both widths equal the float32 product (whose widths the shim's test proves equal), so they equal each other."""
    _require_extension()  # on a CPU without AVX-512 the switch is a no-op, and the child still proves the products
    _rerun_with(
        ("STRATA_KERNEL_ISA", "avx2"),
        "test_the_kernel_computes_with_the_widest_vectors_the_cpu_has_unless_told_avx2",
        "test_the_product_equals_the_float32_product_bitwise",
        "test_the_codes_product_equals_the_float32_product_of_their_dequantized_weights_bitwise",
        timeout=800,
    )


def _rerun_with(setting: tuple[str, str], *tests: str, timeout: int) -> None:
    """Runs this file's `tests` in a child process with `setting` in its environment; all must pass."""
    module = Path(__file__)
    variable, value = setting
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(f"{module}::{test}" for test in tests)],
        env={**os.environ, variable: value, "CI": "true"},  # CI: a skip in the child fails it
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout


_HELPERS_STARTED = """
import os
import mlx.core as mx
from services.platform.fast_blas import blas_thread_control
from shard_server.float16_weights import load_extension

library = load_extension()
control = blas_thread_control()
assert library is not None and control is not None
control.set(2)
x = mx.random.normal((32, 576), key=mx.random.key(1))
weight = (mx.random.normal((1536, 576), key=mx.random.key(2)) * 0.05).astype(mx.float16)
mx.eval(x @ weight.astype(mx.float32).T)  # the shim's product: its pool starts its helper
before = len(os.listdir("/proc/self/task"))
product = library.float16_linear(x, weight)
mx.eval(product)
assert mx.array_equal(product, x @ weight.astype(mx.float32).T).item()
print(len(os.listdir("/proc/self/task")) - before)
"""


def _helpers_started_by_the_extension(environment: dict[str, str]) -> int:
    child = subprocess.run(
        [sys.executable, "-c", _HELPERS_STARTED],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return int(child.stdout.split()[-1])


@pytest.mark.native
@pytest.mark.process
def test_the_extension_computes_on_the_shims_helper_threads_unless_told_to_keep_its_own() -> None:
    _require_extension()
    shared = {key: value for key, value in os.environ.items() if key != "STRATA_KERNEL_POOL"}
    assert _helpers_started_by_the_extension(shared) == 0  # one pool: the shim's helper computes its chunks
    assert _helpers_started_by_the_extension({**shared, "STRATA_KERNEL_POOL": "own"}) == 1


@pytest.mark.native
@pytest.mark.process
@pytest.mark.timeout(600)
def test_with_its_own_pool_the_products_still_equal_the_float32_ones_bitwise() -> None:
    _require_extension()
    _rerun_with(
        ("STRATA_KERNEL_POOL", "own"),
        "test_the_product_equals_the_float32_product_bitwise",
        "test_the_codes_product_equals_the_float32_product_of_their_dequantized_weights_bitwise",
        timeout=500,
    )


class _CodesOffByOneUlp(_OffByOneUlp):
    """Exact float16 products, codes products one rounding off: the load check must refuse the codes only."""

    def float16_linear(self, x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
        return self._library.float16_linear(x, weight, bias)


def _tiny_quantized_llama() -> tuple[nn.Module, dict[str, StoredCodes]]:
    """A tiny llama of mlx-lm's classes quantized by MLX (4 bits, float16 scales), then dequantized to float32."""
    module = importlib.import_module("mlx_lm.models.llama")
    arguments = module.ModelArgs.from_dict(ARCHITECTURE_CONFIGS["llama"])
    mx.random.seed(11)
    model = cast(nn.Module, module.Model(arguments))
    model.set_dtype(mx.float16)
    quantize_module(model, 32, 4, lambda _path, layer: isinstance(layer, (nn.Linear, nn.Embedding)))
    codes = stored_codes(model)
    return convert_module(model, "float32"), codes


@pytest.mark.native
def test_codes_whose_product_differs_are_refused_at_load_and_the_matrices_take_float16(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = _require_extension()
    monkeypatch.setenv(CODES_SWITCH_VARIABLE, "on")
    tokens = mx.array([[1, 5, 9, 200]])
    model, codes = _tiny_quantized_llama()
    assert codes  # every Linear and the embedding were quantized
    before = cast(Callable[[mx.array], mx.array], model)(tokens)
    with caplog.at_level(logging.WARNING, logger="shard_server.float16_weights"):
        storage = hold_weights_in_float16(model, _CodesOffByOneUlp(library), codes)
    assert not storage.code_modules and set(storage.float16_modules) == set(codes)
    assert f"{len(codes)} weight matrices do not keep their codes" in caplog.text
    assert mx.array_equal(cast(Callable[[mx.array], mx.array], model)(tokens), before).item()
    # The real extension keeps every one as its codes, with the same logits.
    model, codes = _tiny_quantized_llama()
    storage = hold_weights_in_float16(model, library, codes)
    assert set(storage.code_modules) == set(codes) and not storage.float16_modules
    assert mx.array_equal(cast(Callable[[mx.array], mx.array], model)(tokens), before).item()
