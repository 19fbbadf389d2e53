"""Gate and up in one float16 product give bitwise the two products' MLP output, or are not joined."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx_lm.models.activations import swiglu

from services.kernel.ids import ModelId
from services.models.model_store import ModelStore
from shard_server.float16_weights import Float16Linear, load_extension
from shard_server.fused_ops import SWITCH_VARIABLE, FusedMLP, fuse_layer_ops
from shard_server.fused_products import PRODUCTS_SWITCH_VARIABLE, FusedGateUpMLP, GateUpLibrary
from shard_server.model_stage import StageRange
from tests.shard_server.stage_runs import prefill_and_decode, stages_switched
from tests.tiny_architectures import NUM_LAYERS, build_tiny_half_model


def _require_library() -> GateUpLibrary:
    library = load_extension()
    if library is None or not hasattr(library, "swiglu_halves") or not library.kernel_available():
        pytest.skip("the float16 extension with swiglu_halves is not built or this CPU lacks AVX2/FMA/F16C")
    return cast(GateUpLibrary, library)


def _bits(values: mx.array) -> np.ndarray:
    return np.array(values).view(np.uint32)


@pytest.mark.native
@pytest.mark.parametrize("width", [1, 7, 8, 9, 17, 1536])
@pytest.mark.parametrize("rows", [1, 5, 33])
def test_the_swiglu_of_halves_equals_mlx_lms_on_the_halves(width: int, rows: int) -> None:
    library = _require_library()
    both = mx.random.normal((1, rows, 2 * width), key=mx.random.key(width * rows)) * 6.0
    expected = swiglu(both[..., :width], both[..., width:])
    assert np.array_equal(_bits(library.swiglu_halves(both)), _bits(expected))
    strided = mx.transpose(both, (1, 0, 2))  # a copy path: still each row's halves
    assert np.array_equal(_bits(library.swiglu_halves(strided)), _bits(mx.transpose(expected, (1, 0, 2))))


@pytest.mark.native
def test_bad_input_is_a_clear_value_error() -> None:
    library = _require_library()
    with pytest.raises(ValueError, match="must be float32"):
        library.swiglu_halves(mx.zeros((2, 4), mx.float16))
    with pytest.raises(ValueError, match="even size"):
        library.swiglu_halves(mx.zeros((2, 5)))


class _Mlp(nn.Module):
    def __init__(self, library: GateUpLibrary) -> None:
        super().__init__()
        for name, shape in (("gate_proj", (40, 24)), ("up_proj", (40, 24)), ("down_proj", (24, 40))):
            weight = mx.random.normal(shape, key=mx.random.key(len(name))).astype(mx.float16)
            setattr(self, name, Float16Linear(library, weight, None))

    def __call__(self, x: mx.array) -> mx.array:
        def project(name: str, values: mx.array) -> mx.array:
            return cast(Callable[[mx.array], mx.array], self[name])(values)

        return project("down_proj", swiglu(project("gate_proj", x), project("up_proj", x)))


class _Model(nn.Module):
    def __init__(self, library: GateUpLibrary) -> None:
        super().__init__()
        self.mlp = _Mlp(library)


class _HalvesOffByOneUlp:
    """The real extension but for `swiglu_halves`, one rounding more: a joined MLP that differs."""

    def __init__(self, library: GateUpLibrary) -> None:
        self._library = library

    def __getattr__(self, name: str) -> object:
        return getattr(self._library, name)

    def swiglu_halves(self, both: mx.array) -> mx.array:
        return self._library.swiglu_halves(both) * (1.0 + 2.0**-20)


@pytest.mark.native
def test_a_joined_mlp_that_differs_keeps_two_products(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = _require_library()
    monkeypatch.setenv(PRODUCTS_SWITCH_VARIABLE, "on")
    model = _Model(library)
    x = mx.random.normal((1, 3, 24), key=mx.random.key(0))
    before = model.mlp(x)
    with caplog.at_level(logging.WARNING, logger="shard_server.fused_ops"):
        fused = fuse_layer_ops(model, _HalvesOffByOneUlp(library))  # pyright: ignore[reportArgumentType]
    assert fused.fused_modules == ("mlp",) and not fused.joined_products
    assert isinstance(model.mlp, FusedMLP)
    assert "an MLP's gate and up in one product differ from two (_Mlp): kept as two" in caplog.text
    assert mx.array_equal(model.mlp(x), before).item()


@pytest.mark.native
def test_a_joined_mlp_equals_the_two_products(monkeypatch: pytest.MonkeyPatch) -> None:
    library = _require_library()
    monkeypatch.setenv(PRODUCTS_SWITCH_VARIABLE, "on")
    model = _Model(library)
    x = mx.random.normal((1, 9, 24), key=mx.random.key(1))
    before = model.mlp(x)
    assert fuse_layer_ops(model).joined_products == ("mlp",)
    assert isinstance(model.mlp, FusedGateUpMLP) and "gate_proj" not in model.mlp
    assert mx.array_equal(model.mlp(x), before).item()


@pytest.mark.native
@pytest.mark.parametrize("setting", ["off", None])
def test_two_products_stay_unless_switched_on(setting: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    library = _require_library()
    if setting is None:
        monkeypatch.delenv(PRODUCTS_SWITCH_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PRODUCTS_SWITCH_VARIABLE, setting)
    model = _Model(library)
    fused = fuse_layer_ops(model)
    assert not fused.joined_products and isinstance(model.mlp, FusedMLP)


@pytest.mark.native
def test_a_tiny_float16_model_joins_its_products_and_stays_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_library()
    monkeypatch.delenv(SWITCH_VARIABLE, raising=False)
    store = ModelStore(tmp_path / "store")
    model_dir = build_tiny_half_model("llama", tmp_path / "scratch", store.model_dir(ModelId("tiny-half-llama")))
    joined, plain = stages_switched(
        model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS), monkeypatch, PRODUCTS_SWITCH_VARIABLE
    )
    assert len(joined.fused_ops.joined_products) == NUM_LAYERS and not plain.fused_ops.joined_products
    assert all(isinstance(cast(nn.Module, layer)["mlp"], FusedGateUpMLP) for layer in joined.layers)
    assert mx.array_equal(prefill_and_decode(joined), prefill_and_decode(plain)).item()
