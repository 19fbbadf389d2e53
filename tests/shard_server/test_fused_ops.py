"""The fused swiglu gives bitwise what mlx-lm's compiled swiglu gives, or is not used (shard_server/fused_ops.py)."""

import logging
from pathlib import Path
from typing import cast

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx_lm.models.activations import swiglu

from services.kernel.ids import ModelId
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_store import ModelStore
from shard_server.fused_ops import SWITCH_VARIABLE, FusedMLP, FusedOpsLibrary, FusedRMSNorm, fuse_layer_ops
from shard_server.fused_products import FusedGateUpMLP
from shard_server.model_stage import StageRange
from tests.shard_server.native_extension import float_bits, require_fused_op
from tests.shard_server.stage_runs import prefill_and_decode, stages_switched
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model

# Element counts around the eight-lane blocks (tails of 1 to 7) and the embedded model's MLP widths.
SIZES = [1, 7, 8, 9, 15, 17, 33, 1536, 7 * 1536, 33 * 1536 + 5]


def _require_fused_ops() -> FusedOpsLibrary:
    return cast(FusedOpsLibrary, require_fused_op("swiglu"))


@pytest.mark.native
@pytest.mark.parametrize("scale", [1.0, 8.0, 100.0, 1e30])
@pytest.mark.parametrize("size", SIZES)
def test_the_swiglu_equals_mlx_lms_bitwise(size: int, scale: float) -> None:
    library = _require_fused_ops()
    gate = mx.random.normal((size,), key=mx.random.key(size)) * scale
    up = mx.random.normal((size,), key=mx.random.key(size + 1)) * scale
    assert np.array_equal(float_bits(library.swiglu(gate, up)), float_bits(swiglu(gate, up)))


@pytest.mark.native
def test_the_swiglu_equals_mlx_lms_on_every_kind_of_float_including_nan_payloads() -> None:
    library = _require_fused_ops()
    # Every 4099th bit pattern: both signs, subnormals, infinities, signalling and quiet NaNs.
    patterns = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    gate = mx.array(patterns.view(np.float32))
    for up in (mx.ones(gate.shape), mx.array(patterns[::-1].copy().view(np.float32))):
        assert np.array_equal(float_bits(library.swiglu(gate, up)), float_bits(swiglu(gate, up)))


@pytest.mark.native
def test_it_computes_strided_inputs_inside_compile() -> None:
    library = _require_fused_ops()
    gate = mx.transpose(mx.random.normal((5, 12, 9), key=mx.random.key(3)), (1, 0, 2))
    up = mx.transpose(mx.random.normal((12, 9, 5), key=mx.random.key(4)), (0, 2, 1))
    compiled = mx.compile(library.swiglu)
    assert np.array_equal(float_bits(compiled(gate, up)), float_bits(swiglu(gate, up)))


@pytest.mark.native
def test_bad_input_is_a_clear_value_error() -> None:
    library = _require_fused_ops()
    with pytest.raises(ValueError, match="must be float32"):
        library.swiglu(mx.zeros((4,), mx.float16), mx.zeros((4,), mx.float16))
    with pytest.raises(ValueError, match="the same shape"):
        library.swiglu(mx.zeros((4,)), mx.zeros((1, 4)))


@pytest.mark.native
@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e20])
@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("size", [1, 7, 9, 64, 576, 577])
def test_the_rms_norm_equals_mlxs_fallback_bitwise(size: int, rows: int, scale: float) -> None:
    library = _require_fused_ops()
    x = mx.random.normal((rows, size), key=mx.random.key(size * rows)) * scale
    weight = mx.random.normal((size,), key=mx.random.key(size))
    for eps in (1e-5, 1e-6):
        assert np.array_equal(
            float_bits(library.rms_norm(x, weight, eps)), float_bits(mx.fast.rms_norm(x, weight, eps))
        )


@pytest.mark.native
def test_the_rms_norm_equals_mlxs_on_a_non_finite_value_per_row() -> None:
    library = _require_fused_ops()
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    x[0, 3], x[1, 5], x[2, 1], x[3, 0], x[4, :] = np.nan, np.inf, -np.inf, 3e38, 0.0
    x[5, 7] = np.uint32(0xFFC01234).view(np.float32)
    weight = mx.random.normal((64,), key=mx.random.key(2))
    assert np.array_equal(
        float_bits(library.rms_norm(mx.array(x), weight, 1e-5)), float_bits(mx.fast.rms_norm(mx.array(x), weight, 1e-5))
    )
    with pytest.raises(ValueError, match="must be float32"):
        library.rms_norm(mx.array(x).astype(mx.float16), weight, 1e-5)
    with pytest.raises(ValueError, match="a vector of x's last axis size"):
        library.rms_norm(mx.array(x), mx.ones((63,)), 1e-5)


@pytest.mark.native
@pytest.mark.model
def test_the_embedded_model_fuses_every_mlp_with_the_same_logits(
    embedded_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_fused_ops()
    model_dir = ModelStore(embedded_models).model_dir(EMBEDDED_MODEL_ID)
    fused, plain = stages_switched(model_dir, StageRange(0, 30, 30), monkeypatch, SWITCH_VARIABLE)
    assert len(fused.fused_ops.fused_modules) == 30 and not fused.fused_ops.kept_modules
    # Two norms per block and the final norm.
    assert len(fused.fused_ops.fused_norms) == 61
    assert "30 MLPs with a fused swiglu and 61 fused RMSNorms" in fused.fused_ops.describe()
    assert plain.fused_ops.reason == f"{SWITCH_VARIABLE}=off"
    assert all(isinstance(cast(nn.Module, layer)["mlp"], FusedMLP | FusedGateUpMLP) for layer in fused.layers)
    assert mx.array_equal(prefill_and_decode(fused), prefill_and_decode(plain)).item()


@pytest.mark.native
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_a_tiny_model_fuses_its_mlps_and_stays_exact(
    model_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_fused_ops()
    model_dir = build_tiny_model(model_type, ModelStore(tmp_path).model_dir(ModelId(f"tiny-{model_type}")))
    fused, plain = stages_switched(model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS), monkeypatch, SWITCH_VARIABLE)
    assert len(fused.fused_ops.fused_modules) == NUM_LAYERS
    assert mx.array_equal(prefill_and_decode(fused), prefill_and_decode(plain)).item()


class _OffByOneUlp:
    """The real swiglu, then one more rounding: a fused op whose arithmetic differs from MLX's."""

    def __init__(self, library: FusedOpsLibrary) -> None:
        self._library = library

    def swiglu(self, gate: mx.array, up: mx.array) -> mx.array:
        return self._library.swiglu(gate, up) * (1.0 + 2.0**-20)

    def rms_norm(self, x: mx.array, weight: mx.array, eps: float) -> mx.array:
        return self._library.rms_norm(x, weight, eps) * (1.0 + 2.0**-20)

    def fused_ops_available(self) -> bool:
        return True


class _Mlp(nn.Module):
    def __init__(self, dtype: mx.Dtype = mx.float32) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(24, 40, bias=False)
        self.up_proj = nn.Linear(24, 40, bias=False)
        self.down_proj = nn.Linear(40, 24, bias=False)
        self.set_dtype(dtype)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class _Model(nn.Module):
    def __init__(self, dtype: mx.Dtype = mx.float32) -> None:
        super().__init__()
        self.mlp = _Mlp(dtype)

    def __call__(self, x: mx.array) -> mx.array:
        return self.mlp(x)


@pytest.mark.native
def test_a_fused_op_whose_results_differ_is_refused_at_load(caplog: pytest.LogCaptureFixture) -> None:
    library = _require_fused_ops()
    model = _Model()
    x = mx.random.normal((1, 3, 24), key=mx.random.key(0))
    before = model(x)
    with caplog.at_level(logging.WARNING, logger="shard_server.fused_ops"):
        fused = fuse_layer_ops(model, _OffByOneUlp(library))
    assert fused.kept_modules == (("mlp", "its fused output differs from MLX's"),) and not fused.fused_modules
    assert "1 modules keep MLX's ops (its fused output differs from MLX's), e.g. mlp" in caplog.text
    assert type(model.mlp) is _Mlp
    # The real extension passes the same check on the same module.
    assert fuse_layer_ops(model, library).fused_modules == ("mlp",)
    assert isinstance(model.mlp, FusedMLP)
    assert mx.array_equal(model(x), before).item()


@pytest.mark.native
def test_an_mlp_computing_in_float16_takes_mlx_lms_swiglu() -> None:
    library = _require_fused_ops()
    model = _Model(mx.float16)
    x = mx.random.normal((1, 5, 24), key=mx.random.key(1)).astype(mx.float16)
    before = model(x)
    assert fuse_layer_ops(model, library).fused_modules == ("mlp",)  # checked on float32 rows
    assert mx.array_equal(model(x), before).item() and model(x).dtype == mx.float16


@pytest.mark.unit
def test_the_switch_turns_it_off_before_anything_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SWITCH_VARIABLE, "off")
    model = _Model()
    assert fuse_layer_ops(model).describe() == f"layer ops through MLX ({SWITCH_VARIABLE}=off)"
    assert type(model.mlp) is _Mlp


class _NormedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(24, eps=1e-5)
        self.norm.weight = mx.random.normal((24,), key=mx.random.key(3))

    def __call__(self, x: mx.array) -> mx.array:
        return self.norm(x)


@pytest.mark.native
def test_a_fused_norm_whose_results_differ_is_refused_and_the_real_one_is_kept() -> None:
    library = _require_fused_ops()
    model = _NormedModel()
    x = mx.random.normal((1, 5, 24), key=mx.random.key(1)) * 300.0
    before = model(x)
    refused = fuse_layer_ops(model, _OffByOneUlp(library))
    assert refused.kept_modules == (("norm", "its fused output differs from MLX's"),) and not refused.fused_norms
    assert type(model.norm) is nn.RMSNorm
    assert fuse_layer_ops(model, library).fused_norms == ("norm",)
    assert isinstance(model.norm, FusedRMSNorm)
    assert mx.array_equal(model(x), before).item()
