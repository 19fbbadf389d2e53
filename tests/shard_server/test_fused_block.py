"""The fused llama block (q/k/v in one product, add then norm in one op) equals mlx-lm's bitwise, or is not used."""

import logging
from pathlib import Path
from typing import cast

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx_lm.models import llama
from mlx_lm.models.cache import KVCache

from services.kernel.ids import ModelId
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_store import ModelStore
from shard_server.batched_forward import Block, LayerPlan, RequestRows, forward_rows
from shard_server.float16_weights import Float16Linear
from shard_server.fused_block import (
    ADD_NORM_SWITCH_VARIABLE,
    NEXT_NORM_SWITCH_VARIABLE,
    QKV_SWITCH_VARIABLE,
    BlockLibrary,
    FusedLlamaBlock,
    fuse_blocks,
)
from shard_server.fused_ops import FusedOpsLibrary, fuse_layer_ops
from shard_server.layer_kinds import FULL_ATTENTION
from shard_server.model_stage import ModelStage, StageRange
from tests.shard_server.native_extension import float_bits, require_fused_op
from tests.shard_server.stage_runs import prefill_and_decode, stages_switched
from tests.tiny_architectures import NUM_LAYERS, build_tiny_half_model


def _require_library() -> BlockLibrary:
    return cast(BlockLibrary, require_fused_op("add_rms_norm"))


def _expected(x: mx.array, branch: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    total = x + branch
    return total, mx.fast.rms_norm(total, weight, eps)


@pytest.mark.native
@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e20])
@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("size", [1, 7, 8, 9, 64, 576, 577])
def test_add_rms_norm_equals_mlxs_add_then_norm_bitwise(size: int, rows: int, scale: float) -> None:
    library = _require_library()
    x = mx.random.normal((1, rows, size), key=mx.random.key(size * rows)) * scale
    branch = mx.random.normal((1, rows, size), key=mx.random.key(size * rows + 1)) * scale
    weight = mx.random.normal((size,), key=mx.random.key(size))
    for eps in (1e-5, 1e-6):
        total, normed = library.add_rms_norm(x, branch, weight, eps)
        expected_total, expected_normed = _expected(x, branch, weight, eps)
        assert np.array_equal(float_bits(total), float_bits(expected_total))
        assert np.array_equal(float_bits(normed), float_bits(expected_normed))


@pytest.mark.native
def test_add_rms_norm_equals_mlxs_on_non_finite_values_and_nan_payloads() -> None:
    library = _require_library()
    generator = np.random.default_rng(0)
    x = generator.standard_normal((9, 64)).astype(np.float32)
    branch = generator.standard_normal((9, 64)).astype(np.float32)
    x[0, 3], x[1, 5], x[2, 1], x[3, 0], x[4, :] = np.nan, np.inf, -np.inf, 3e38, 0.0
    branch[3, 0], branch[5, 2], branch[6, 9] = 3e38, np.inf, np.nan
    x[5, 2] = -np.inf  # inf + -inf
    x[7, 7], branch[7, 7] = np.uint32(0x7FC00001).view(np.float32), np.uint32(0xFFC01234).view(np.float32)
    x[8, 1], branch[8, 60] = np.uint32(0x7F800001).view(np.float32), np.uint32(0xFF800003).view(np.float32)
    weight = mx.random.normal((64,), key=mx.random.key(2))
    total, normed = library.add_rms_norm(mx.array(x), mx.array(branch), weight, 1e-5)
    expected_total, expected_normed = _expected(mx.array(x), mx.array(branch), weight, 1e-5)
    assert np.array_equal(float_bits(total), float_bits(expected_total))
    assert np.array_equal(float_bits(normed), float_bits(library.rms_norm(expected_total, weight, 1e-5)))
    # Rows with at most one NaN also match MLX's own norm (several NaNs in a row: see rms_norm's comment).
    assert np.array_equal(float_bits(normed)[:7], float_bits(expected_normed)[:7])


@pytest.mark.native
def test_add_rms_norm_reads_strided_inputs() -> None:
    library = _require_library()
    x = mx.transpose(mx.random.normal((24, 5), key=mx.random.key(3)), (1, 0))
    branch = mx.random.normal((5, 48), key=mx.random.key(4))[:, ::2]
    weight = mx.random.normal((24,), key=mx.random.key(5))
    total, normed = mx.compile(library.add_rms_norm)(x, branch, weight, 1e-5)
    expected_total, expected_normed = _expected(x, branch, weight, 1e-5)
    assert np.array_equal(float_bits(total), float_bits(expected_total))
    assert np.array_equal(float_bits(normed), float_bits(expected_normed))


@pytest.mark.native
def test_add_rms_norm_refuses_bad_input_with_a_clear_value_error() -> None:
    library = _require_library()
    x = mx.zeros((2, 8))
    with pytest.raises(ValueError, match="must be float32"):
        library.add_rms_norm(x.astype(mx.float16), x, mx.ones((8,)), 1e-5)
    with pytest.raises(ValueError, match="the same shape"):
        library.add_rms_norm(x, mx.zeros((1, 8)), mx.ones((8,)), 1e-5)
    with pytest.raises(ValueError, match="a vector of x's last axis size"):
        library.add_rms_norm(x, x, mx.ones((7,)), 1e-5)


_ARGUMENTS: dict[str, object] = {
    "model_type": "llama",
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "intermediate_size": 80,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 64,
}


class _Blocks(nn.Module):
    """Two mlx-lm llama blocks with float16-valued weights held as strata's float16 linear layers."""

    def __init__(self, library: BlockLibrary) -> None:
        super().__init__()
        arguments = llama.ModelArgs.from_dict(_ARGUMENTS)
        mx.random.seed(11)
        self.layers = [llama.TransformerBlock(arguments) for _ in range(2)]
        for layer in self.layers:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                weight = cast(mx.array, cast(nn.Module, layer.self_attn[name])["weight"]) * 4
                layer.self_attn[name] = Float16Linear(library, weight.astype(mx.float16), None)
            layer.post_attention_layernorm.weight = mx.random.normal((48,), key=mx.random.key(9))
        fuse_layer_ops(self, cast(FusedOpsLibrary, library))


def _run(blocks: _Blocks) -> mx.array:
    """A prefill chunk then a decode row through both blocks, on fresh caches."""
    caches = [KVCache(), KVCache()]
    outputs: list[mx.array] = []
    for rows in (5, 1):
        hidden = mx.random.normal((1, rows, 48), key=mx.random.key(rows))
        for layer, cache in zip(blocks.layers, caches, strict=True):
            hidden = layer(hidden, FULL_ATTENTION.mask(hidden, cache), cache)
        outputs.append(hidden)
    return mx.concatenate(outputs, axis=1)


class _AddNormOffByOneUlp:
    """The real extension, but an add-then-norm with one more rounding: it must fail the load check."""

    def __init__(self, library: BlockLibrary) -> None:
        self._library = library

    def float16_linear(self, x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
        return self._library.float16_linear(x, weight, bias)

    def rms_norm(self, x: mx.array, weight: mx.array, eps: float) -> mx.array:
        return self._library.rms_norm(x, weight, eps)

    def add_rms_norm(self, x: mx.array, branch: mx.array, weight: mx.array, eps: float) -> list[mx.array]:
        total, normed = self._library.add_rms_norm(x, branch, weight, eps)
        return [total, normed * (1.0 + 2.0**-20)]


class _JoinedProductOffByOneUlp(_AddNormOffByOneUlp):
    """A float16 product that differs only when it is the joined q/k/v's: the block check must refuse it."""

    def float16_linear(self, x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
        product = self._library.float16_linear(x, weight, bias)
        return product * (1.0 + 2.0**-20) if weight.shape[0] == 48 + 2 * 16 else product

    def add_rms_norm(self, x: mx.array, branch: mx.array, weight: mx.array, eps: float) -> list[mx.array]:
        return self._library.add_rms_norm(x, branch, weight, eps)


@pytest.mark.native
def test_the_fused_blocks_equal_mlx_lms_and_join_q_k_and_v(monkeypatch: pytest.MonkeyPatch) -> None:
    library = _require_library()
    monkeypatch.delenv(QKV_SWITCH_VARIABLE, raising=False)
    monkeypatch.delenv(ADD_NORM_SWITCH_VARIABLE, raising=False)
    blocks = _Blocks(library)
    before = _run(blocks)
    fused = fuse_blocks(blocks, library)
    assert sorted(fused.fused_blocks) == ["layers.0", "layers.1"] == sorted(fused.joined_qkv) and not fused.kept_blocks
    assert fused.describe() == (
        "2 fused llama blocks, 2 with q/k/v in one product, 2 adding the residual into their input norm"
    )
    layer = cast(FusedLlamaBlock, blocks.layers[0])
    assert isinstance(layer, FusedLlamaBlock) and "qkv_proj" in layer.self_attn and "q_proj" not in layer.self_attn
    assert mx.array_equal(_run(blocks), before).item()


@pytest.mark.native
def test_an_add_norm_that_differs_is_refused_at_load_and_the_join_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    library = _require_library()
    monkeypatch.delenv(QKV_SWITCH_VARIABLE, raising=False)
    monkeypatch.delenv(ADD_NORM_SWITCH_VARIABLE, raising=False)
    blocks = _Blocks(library)
    before = _run(blocks)
    with caplog.at_level(logging.WARNING, logger="shard_server.fused_block"):
        fused = fuse_blocks(blocks, cast(BlockLibrary, _AddNormOffByOneUlp(library)))
    assert "add_rms_norm differs from MLX's add and norm (size 48): kept apart" in caplog.text
    assert sorted(fused.joined_qkv) == ["layers.0", "layers.1"]
    assert mx.array_equal(_run(blocks), before).item()


@pytest.mark.native
def test_a_fused_block_that_differs_is_refused_and_mlx_lms_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    library = _require_library()
    monkeypatch.delenv(QKV_SWITCH_VARIABLE, raising=False)
    monkeypatch.delenv(ADD_NORM_SWITCH_VARIABLE, raising=False)
    blocks = _Blocks(library)
    with caplog.at_level(logging.WARNING, logger="shard_server.fused_block"):
        fused = fuse_blocks(blocks, cast(BlockLibrary, _JoinedProductOffByOneUlp(library)))
    reason = "its fused output differs from mlx-lm's block"
    assert sorted(fused.kept_blocks) == [("layers.0", reason), ("layers.1", reason)] and not fused.fused_blocks
    assert f"2 llama blocks stay mlx-lm's ({reason}), e.g. layers." in caplog.text
    assert all(type(layer) is llama.TransformerBlock for layer in blocks.layers)


@pytest.mark.native
@pytest.mark.parametrize(
    ("qkv", "add_norm", "next_norm", "counts"),
    [
        ("off", "on", "on", (2, 0, 2)),
        ("on", "off", "on", (2, 2, 0)),
        ("on", "on", "off", (2, 2, 0)),
        ("off", "off", "on", (0, 0, 0)),
    ],
)
def test_each_switch_turns_its_part_off(
    qkv: str, add_norm: str, next_norm: str, counts: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    library = _require_library()
    monkeypatch.setenv(QKV_SWITCH_VARIABLE, qkv)
    monkeypatch.setenv(ADD_NORM_SWITCH_VARIABLE, add_norm)
    monkeypatch.setenv(NEXT_NORM_SWITCH_VARIABLE, next_norm)
    blocks = _Blocks(library)
    before = _run(blocks)
    fused = fuse_blocks(blocks, library)
    assert (len(fused.fused_blocks), len(fused.joined_qkv), len(fused.carrying_residual)) == counts
    if not counts[0]:
        assert fused.reason == f"{QKV_SWITCH_VARIABLE}=off and {ADD_NORM_SWITCH_VARIABLE}=off"
    assert mx.array_equal(_run(blocks), before).item()


def _forward(blocks: _Blocks, lengths: list[int], batched: bool) -> mx.array:
    """Requests of `lengths` rows prefilled, then one decode row each, through `forward_rows`."""
    caches = [[KVCache(), KVCache()] for _ in lengths]
    outputs: list[mx.array] = []
    plans = [LayerPlan(FULL_ATTENTION, batched=batched)] * 2
    for step_lengths in (lengths, [1] * len(lengths)):
        starts = [sum(step_lengths[:index]) for index in range(len(step_lengths))]
        rows = zip(caches, starts, step_lengths, strict=True)
        requests = [RequestRows(cache, start, length) for cache, start, length in rows]
        hidden = mx.random.normal((1, sum(step_lengths), 48), key=mx.random.key(sum(step_lengths)))
        outputs.append(forward_rows(cast(list[Block], blocks.layers), hidden, requests, plans))
    return mx.concatenate(outputs, axis=1)


@pytest.mark.native
@pytest.mark.parametrize(("lengths", "batched"), [([6], False), ([3, 1, 4], True), ([3, 1, 4], False)])
def test_forward_rows_carries_the_residual_across_fused_blocks_exactly(
    lengths: list[int], batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = _require_library()
    for variable in (QKV_SWITCH_VARIABLE, ADD_NORM_SWITCH_VARIABLE, NEXT_NORM_SWITCH_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    blocks = _Blocks(library)
    before = _forward(blocks, lengths, batched)
    assert len(fuse_blocks(blocks, library).carrying_residual) == 2
    assert mx.array_equal(_forward(blocks, lengths, batched), before).item()


@pytest.mark.native
def test_a_carried_residual_that_differs_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    library = _require_library()
    for variable in (QKV_SWITCH_VARIABLE, ADD_NORM_SWITCH_VARIABLE, NEXT_NORM_SWITCH_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    real_input_rows = FusedLlamaBlock.input_rows

    def off_by_one_ulp(block: FusedLlamaBlock, x: mx.array, pending: mx.array | None) -> tuple[mx.array, mx.array]:
        total, normed = real_input_rows(block, x, pending)
        return total, normed if pending is None else normed * (1.0 + 2.0**-20)

    monkeypatch.setattr(FusedLlamaBlock, "input_rows", off_by_one_ulp)
    blocks = _Blocks(library)
    fused = fuse_blocks(blocks, library)
    assert not fused.fused_blocks and len(fused.kept_blocks) == 2
    assert all(type(layer) is llama.TransformerBlock for layer in blocks.layers)


@pytest.mark.unit
def test_a_library_without_add_rms_norm_fuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(QKV_SWITCH_VARIABLE, raising=False)
    monkeypatch.delenv(ADD_NORM_SWITCH_VARIABLE, raising=False)
    assert fuse_blocks(nn.Module(), None).reason == "the fused ops extension has no add_rms_norm (rebuild it: make)"


_BLOCK_SWITCHES = (QKV_SWITCH_VARIABLE, ADD_NORM_SWITCH_VARIABLE, NEXT_NORM_SWITCH_VARIABLE)
"""Every fused block part: on together, then off together."""


@pytest.mark.native
def test_a_tiny_float16_llama_fuses_its_blocks_and_stays_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_library()
    store = ModelStore(tmp_path / "store")
    model_dir = build_tiny_half_model("llama", tmp_path / "scratch", store.model_dir(ModelId("tiny-half-llama")))
    fused, plain = stages_switched(model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS), monkeypatch, *_BLOCK_SWITCHES)
    assert all(isinstance(layer, FusedLlamaBlock) for layer in fused.layers)
    assert not any(isinstance(layer, FusedLlamaBlock) for layer in plain.layers)
    assert mx.array_equal(prefill_and_decode(fused), prefill_and_decode(plain)).item()
    assert mx.array_equal(_one_request(fused), _one_request(plain)).item()


def _one_request(stage: ModelStage) -> mx.array:
    """One request alone (mlx-lm's block path, or the fused block's): a prefill then two decode steps' logits."""
    cache = stage.make_cache()
    outputs: list[mx.array] = []
    for tokens in ([3, 5, 7, 11, 13], [17], [19]):
        hidden = stage.run_layers(stage.embed(mx.array(tokens)[None]), [RequestRows(cache, 0, len(tokens))])
        outputs.append(stage.logits(hidden))
    return mx.concatenate(outputs, axis=1)


@pytest.mark.native
@pytest.mark.parametrize("model_type", ["qwen2"])
def test_other_families_keep_their_own_blocks(model_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_library()
    store = ModelStore(tmp_path / "store")
    model_dir = build_tiny_half_model(model_type, tmp_path / "scratch", store.model_dir(ModelId(f"tiny-{model_type}")))
    fused, _ = stages_switched(model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS), monkeypatch, *_BLOCK_SWITCHES)
    assert not any(isinstance(layer, FusedLlamaBlock) for layer in fused.layers)


@pytest.mark.native
@pytest.mark.model
def test_the_embedded_model_fuses_every_block_with_the_same_logits(
    embedded_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_library()
    model_dir = ModelStore(embedded_models).model_dir(EMBEDDED_MODEL_ID)
    fused, plain = stages_switched(model_dir, StageRange(0, 30, 30), monkeypatch, *_BLOCK_SWITCHES)
    assert "30 fused llama blocks" in fused.fused_ops.describe()
    assert all(isinstance(layer, FusedLlamaBlock) for layer in fused.layers)
    assert mx.array_equal(prefill_and_decode(fused), prefill_and_decode(plain)).item()
    assert mx.array_equal(_one_request(fused), _one_request(plain)).item()
