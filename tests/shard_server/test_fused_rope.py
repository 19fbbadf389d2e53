"""The fused RoPE gives bitwise what MLX's CPU fallback of mx.fast.rope gives, or is not used (fused_rope.py)."""

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.models.rope_utils import Llama3RoPE, SuScaledRoPE, YarnRoPE

from services.kernel.ids import ModelId
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_store import ModelStore
from services.models.model_writer import save_model_directory
from shard_server.fused_ops import SWITCH_VARIABLE, fuse_layer_ops
from shard_server.fused_rope import ROPE_SWITCH_VARIABLE, FusedRoPE, FusedRopeLibrary, fused_twin
from shard_server.model_stage import StageRange
from tests.shard_server.native_extension import float_bits, require_fused_op
from tests.shard_server.stage_runs import prefill_and_decode, stages_switched
from tests.tiny_architectures import ARCHITECTURE_CONFIGS, NUM_LAYERS, build_tiny_model

LLAMA3_SCALING: dict[str, object] = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _require_rope() -> FusedRopeLibrary:
    return cast(FusedRopeLibrary, require_fused_op("rope"))


def _positions(rows: int, seed: int) -> mx.array:
    positions = np.random.default_rng(seed).integers(0, 1 << 24, rows).astype(np.int32)
    positions[0] = 9_000_001  # past 2^23: MLX's sin and cos go to libm
    return mx.array(positions)


@pytest.mark.native
@pytest.mark.parametrize(
    ("dims", "size", "base", "traditional", "scale"),
    [
        (64, 64, 100000.0, False, 1.0),  # the embedded model's
        (64, 64, 10000.0, True, 1.0),
        (16, 24, 10000.0, False, 0.25),  # a partial rotation: the rest copied
        (32, 40, 500000.0, True, 2.0),
        (128, 128, 1000000.0, False, 1.0),
    ],
)
@pytest.mark.parametrize(
    ("shape", "offset"), [((1, 9, 5), 0), ((1, 3, 33), 70_001), ((7, 4, 1), None), ((33, 2, 1), None)]
)
def test_the_rope_equals_mlxs_fallback_bitwise(
    dims: int, size: int, base: float, traditional: bool, scale: float, shape: tuple[int, int, int], offset: int | None
) -> None:
    library = _require_rope()
    x = mx.random.normal((*shape, size), key=mx.random.key(dims * size + shape[0])) * 3.0
    offsets = _positions(shape[0], seed=dims + shape[0]) if offset is None else mx.array(offset, dtype=mx.int32)
    expected = mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offsets)
    inverse = library.rope_inverse_frequencies(dims, base)
    assert np.array_equal(float_bits(library.rope(x, offsets, inverse, dims, traditional, scale)), float_bits(expected))


@pytest.mark.native
def test_strided_three_dimensional_and_compiled_inputs_equal_mlxs() -> None:
    library = _require_rope()
    twin = FusedRoPE(library, 64, False, 1.0, 100000.0, None)
    # batched_forward's heads: (rows, heads, 1, head_dim) transposed from (rows, 1, heads, head_dim).
    x = mx.transpose(mx.random.normal((5, 1, 9, 64), key=mx.random.key(1)), (0, 2, 1, 3))
    offsets = mx.array([0, 3, 100, 7000, 9_000_001], dtype=mx.int32)
    expected = mx.fast.rope(x, 64, traditional=False, base=100000.0, scale=1.0, offset=offsets)
    assert np.array_equal(float_bits(twin(x, offset=offsets)), float_bits(expected))
    assert np.array_equal(float_bits(mx.compile(twin)(x, offsets)), float_bits(expected))
    # A prefill's heads, (1, heads, steps, head_dim) transposed, and every other dimension of wider heads.
    for strided in (
        mx.transpose(mx.random.normal((1, 13, 9, 64), key=mx.random.key(9)), (0, 2, 1, 3)),
        mx.random.normal((2, 3, 4, 128), key=mx.random.key(10))[..., ::2],
        mx.random.normal((2, 3, 4, 64), key=mx.random.key(11))[..., ::-1],
    ):
        expected = mx.fast.rope(strided, 64, traditional=False, base=100000.0, scale=1.0, offset=77)
        assert np.array_equal(float_bits(twin(strided, offset=77)), float_bits(expected))
    flat = mx.random.normal((2, 6, 64), key=mx.random.key(2))
    expected = mx.fast.rope(flat, 64, traditional=False, base=100000.0, scale=1.0, offset=41)
    assert np.array_equal(float_bits(twin(flat, offset=41)), float_bits(expected))


@pytest.mark.native
def test_llama3_frequencies_equal_mlx_lms_rope() -> None:
    library = _require_rope()
    original = Llama3RoPE(64, max_position_embeddings=4096, base=500000.0, scaling_config=LLAMA3_SCALING)
    twin = fused_twin(library, original)
    assert twin is not None
    for x, offset in [
        (mx.random.normal((1, 4, 17, 64), key=mx.random.key(3)), 12),
        (mx.random.normal((6, 4, 1, 64), key=mx.random.key(4)), _positions(6, seed=5)),
    ]:
        expected = cast(Callable[..., mx.array], original)(x, offset=offset)
        assert np.array_equal(float_bits(twin(x, offset=offset)), float_bits(expected))


@pytest.mark.native
def test_other_dtypes_and_offsets_take_mlxs_rope() -> None:
    library = _require_rope()
    twin = FusedRoPE(library, 16, False, 1.0, 10000.0, None)
    half = mx.random.normal((1, 2, 3, 16), key=mx.random.key(6)).astype(mx.float16)
    expected = mx.fast.rope(half, 16, traditional=False, base=10000.0, scale=1.0, offset=5)
    assert twin(half, offset=5).dtype == mx.float16 and mx.array_equal(twin(half, offset=5), expected).item()
    x = mx.random.normal((2, 2, 1, 16), key=mx.random.key(7))
    wide = mx.array([4, 9], dtype=mx.int64)
    expected = mx.fast.rope(x, 16, traditional=False, base=10000.0, scale=1.0, offset=wide)
    assert mx.array_equal(twin(x, offset=wide), expected).item()


@pytest.mark.native
def test_bad_input_is_a_clear_value_error() -> None:
    library = _require_rope()
    inverse = library.rope_inverse_frequencies(8, 10000.0)
    x = mx.zeros((2, 1, 1, 8))
    with pytest.raises(ValueError, match="must be float32"):
        library.rope(x.astype(mx.float16), mx.array(0, dtype=mx.int32), inverse, 8, False, 1.0)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        library.rope(mx.zeros((2, 8)), mx.array(0, dtype=mx.int32), inverse, 8, False, 1.0)
    with pytest.raises(ValueError, match="positive, even"):
        library.rope(x, mx.array(0, dtype=mx.int32), inverse, 7, False, 1.0)
    with pytest.raises(ValueError, match="dims / 2 values"):
        library.rope(x, mx.array(0, dtype=mx.int32), mx.ones((3,)), 8, False, 1.0)
    with pytest.raises(ValueError, match="one per entry"):
        library.rope(x, mx.array([1, 2, 3], dtype=mx.int32), inverse, 8, False, 1.0)
    with pytest.raises(ValueError, match="int32"):
        library.rope(x, mx.array(0.5), inverse, 8, False, 1.0)
    with pytest.raises(ValueError, match="positive and even"):
        library.rope_inverse_frequencies(0, 10000.0)


class _OffByOneUlp:
    """The real rope, then one more rounding: a fused RoPE whose arithmetic differs from MLX's."""

    def __init__(self, library: FusedRopeLibrary) -> None:
        self._library = library

    def rope(
        self, x: mx.array, offset: mx.array, inverse_frequencies: mx.array, dims: int, traditional: bool, scale: float
    ) -> mx.array:
        return self._library.rope(x, offset, inverse_frequencies, dims, traditional, scale) * (1.0 + 2.0**-20)

    def rope_inverse_frequencies(self, dims: int, base: float) -> mx.array:
        return self._library.rope_inverse_frequencies(dims, base)

    def swiglu(self, gate: mx.array, up: mx.array) -> mx.array:
        raise AssertionError("no MLP here")

    def rms_norm(self, x: mx.array, weight: mx.array, eps: float) -> mx.array:
        raise AssertionError("no norm here")

    def fused_ops_available(self) -> bool:
        return True


class _Attention(nn.Module):
    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        self.rope = rope

    def __call__(self, x: mx.array) -> mx.array:
        return cast(Callable[..., mx.array], self.rope)(x, offset=3)


@pytest.mark.native
def test_a_rope_whose_results_differ_is_refused_at_load(caplog: pytest.LogCaptureFixture) -> None:
    library = _require_rope()
    model = _Attention(nn.RoPE(16, base=10000.0))
    with caplog.at_level(logging.WARNING, logger="shard_server.fused_ops"):
        refused = fuse_layer_ops(model, _OffByOneUlp(library))
    assert refused.kept_modules == (("rope", "its fused output differs from MLX's"),) and not refused.fused_ropes
    assert "1 modules keep MLX's ops (its fused output differs from MLX's), e.g. rope" in caplog.text
    assert type(model.rope) is nn.RoPE
    assert fuse_layer_ops(model, _OffByOneUlp(library)).fused_ropes == ()
    x = mx.random.normal((1, 2, 5, 16), key=mx.random.key(8))
    before = model(x)
    assert fuse_layer_ops(model).fused_ropes == ("rope",)
    assert isinstance(model.rope, FusedRoPE) and mx.array_equal(model(x), before).item()


@pytest.mark.native
@pytest.mark.parametrize(
    "rope",
    [
        SuScaledRoPE(16, max_position_embeddings=8192, original_max_position_embeddings=4096),
        YarnRoPE(16, scaling_factor=4.0),
    ],
    ids=["SuScaledRoPE", "YarnRoPE"],
)
def test_rope_forms_not_fused_stay_on_mlx_with_a_log_line(rope: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    _require_rope()
    model = _Attention(rope)
    with caplog.at_level(logging.WARNING, logger="shard_server.fused_ops"):
        fused = fuse_layer_ops(model)
    name = type(rope).__name__
    assert fused.kept_modules == (("rope", f"a RoPE form not fused ({name})"),) and model.rope is rope
    assert f"1 modules keep MLX's ops (a RoPE form not fused ({name})), e.g. rope" in caplog.text


@pytest.mark.native
def test_the_switch_keeps_mlxs_rope(monkeypatch: pytest.MonkeyPatch) -> None:
    _require_rope()
    monkeypatch.setenv(ROPE_SWITCH_VARIABLE, "off")
    model = _Attention(nn.RoPE(16))
    fused = fuse_layer_ops(model)
    assert type(model.rope) is nn.RoPE and not fused.fused_ropes and not fused.kept_modules


@pytest.mark.native
@pytest.mark.model
def test_the_embedded_model_fuses_every_rope_with_the_same_logits(
    embedded_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_rope()
    monkeypatch.delenv(SWITCH_VARIABLE, raising=False)
    model_dir = ModelStore(embedded_models).model_dir(EMBEDDED_MODEL_ID)
    fused, plain = stages_switched(model_dir, StageRange(0, 30, 30), monkeypatch, ROPE_SWITCH_VARIABLE)
    assert len(fused.fused_ops.fused_ropes) == 30 and not fused.fused_ops.kept_modules
    assert "30 MLPs with a fused swiglu and 61 fused RMSNorms, 30 fused RoPEs" in fused.fused_ops.describe()
    assert not plain.fused_ops.fused_ropes and len(plain.fused_ops.fused_modules) == 30
    assert all(isinstance(cast(nn.Module, layer)["self_attn"]["rope"], FusedRoPE) for layer in fused.layers)
    assert mx.array_equal(prefill_and_decode(fused), prefill_and_decode(plain)).item()


def _tiny_llama3_model(destination: Path) -> Path:
    """A tiny random llama with llama3 RoPE scaling (mlx-lm's Llama3RoPE), saved in strata's layout."""
    config = {**ARCHITECTURE_CONFIGS["llama"], "rope_scaling": LLAMA3_SCALING, "rope_theta": 500000.0}
    module = importlib.import_module("mlx_lm.models.llama")
    arguments = cast(Callable[[dict[str, object]], object], module.ModelArgs.from_dict)(config)
    mx.random.seed(11)
    model = cast(Callable[[object], nn.Module], module.Model)(arguments)
    weights = {name: array * 4 if array.ndim == 2 else array for name, array in tree_flatten(model.parameters())}
    save_model_directory(destination, config, weights)
    return destination


@pytest.mark.native
@pytest.mark.parametrize("model_type", ["llama3", "qwen3"])
def test_a_tiny_model_fuses_its_ropes_and_stays_exact(
    model_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_rope()
    monkeypatch.delenv(SWITCH_VARIABLE, raising=False)
    store = ModelStore(tmp_path)
    if model_type == "llama3":
        model_dir = _tiny_llama3_model(store.model_dir(ModelId("tiny-llama3")))
    else:
        model_dir = build_tiny_model(model_type, store.model_dir(ModelId(f"tiny-{model_type}")))
    fused, plain = stages_switched(model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS), monkeypatch, ROPE_SWITCH_VARIABLE)
    assert len(fused.fused_ops.fused_ropes) == NUM_LAYERS and not fused.fused_ops.kept_modules
    if model_type == "llama3":
        assert type(cast(object, cast(nn.Module, plain.layers[0])["self_attn"]["rope"])) is Llama3RoPE
    assert mx.array_equal(prefill_and_decode(fused), prefill_and_decode(plain)).item()


@pytest.mark.native
def test_its_cos_and_sin_are_mlxs_at_every_magnitude() -> None:
    library = _require_rope()
    generator = np.random.default_rng(12)
    angles = np.concatenate(
        [
            generator.uniform(-1e4, 1e4, 50_000),
            generator.uniform(-9e6, 9e6, 50_000),  # some past 2^23: MLX's libm path, eight lanes at a time
            np.array([0.0, -0.0, 8388608.0, 8388609.0, -8388610.0, 1e-30, np.pi, np.pi / 2]),
        ]
    ).astype(np.float32)
    count = len(angles)
    # One row at position 1 with x1 = 1 and x2 = 0: the first half is cos(angle), the second sin(angle).
    x = mx.concatenate([mx.ones((1, 1, 1, count)), mx.zeros((1, 1, 1, count))], axis=-1)
    rotated = library.rope(x, mx.array(1, dtype=mx.int32), mx.array(angles), 2 * count, False, 1.0)
    expected = mx.concatenate([mx.cos(mx.array(angles)), mx.sin(mx.array(angles))])
    assert np.array_equal(float_bits(mx.reshape(rotated, (-1,))), float_bits(expected))
