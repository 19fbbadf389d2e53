"""One pipeline stage of a model: global layers [start, end) built from mlx-lm's model classes.

The first stage also holds the token embedding; the last holds the final norm and the LM head (and
the embedding matrix when embeddings are tied). Only the weight files of the stage are read, and
the model's other layers are dropped before any weight is materialized, so a stage never holds the
whole model. The forward pass runs exactly the ops of the model's own `__call__` (embedding, each block with the
attention mask of its cache, norm, head), so splitting is exact by construction; several requests
share a step through `batched_forward`.
"""

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache

from services.kernel.compute_dtype import ComputeDtype
from services.models.model_config import ModelConfig, Quantization, read_model_config
from services.models.model_families import SUPPORTED_MODEL_TYPES
from services.models.model_files import weight_files_for_stage
from services.platform.mlx_compute import convert_module
from services.platform.mlx_typing import embedding_as_linear, evaluate, load_module_weights, quantize_module
from shard_server.batched_forward import Block, RequestRows, RowFunction, check_batch_invariance, forward_rows
from shard_server.compact_linear import CompactLinear
from shard_server.float16_weights import CODES_SWITCH_VARIABLE, WeightStorage, hold_weights_in_float16, switched_on
from shard_server.native_attention import NativeAttention, load_native_attention
from shard_server.weight_codes import stored_codes


class ModelLoadError(Exception):
    """The model cannot be served as asked (unsupported architecture, bad range, missing files)."""


class ModelArguments(Protocol):
    def from_dict(self, params: dict[str, object]) -> object: ...


@dataclass(frozen=True)
class StageRange:
    start_layer: int
    end_layer: int
    num_layers: int

    @property
    def is_first(self) -> bool:
        return self.start_layer == 0

    @property
    def is_last(self) -> bool:
        return self.end_layer == self.num_layers


def _model_classes(model_type: str) -> tuple[Callable[[object], nn.Module], ModelArguments]:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    module = importlib.import_module(f"mlx_lm.models.{model_type}")
    return cast(Callable[[object], nn.Module], module.Model), cast(ModelArguments, module.ModelArgs)


def _check_full_attention(config: ModelConfig) -> None:
    if any(kind != "full" for kind in config.layer_attention):
        raise ModelLoadError("models with sliding-window layers are not supported yet")
    if config.raw.get("use_sliding_window") is True:
        raise ModelLoadError("models with sliding-window attention are not supported yet")


class ModelStage:
    """Owns the weights of one stage. Not thread-safe: one worker thread owns it."""

    def __init__(self, model_dir: Path, stage: StageRange, compute_dtype: ComputeDtype = "stored") -> None:
        config = read_model_config(model_dir)
        self.config = config
        """The model's config, parsed here once; the service takes its figures from it."""
        if config.num_layers != stage.num_layers:
            raise ModelLoadError(f"model has {config.num_layers} layers, the assignment says {stage.num_layers}")
        if not 0 <= stage.start_layer < stage.end_layer <= stage.num_layers:
            raise ModelLoadError(
                f"layer range [{stage.start_layer}, {stage.end_layer}) is not inside [0, {stage.num_layers})"
            )
        _check_full_attention(config)
        model_class, arguments_class = _model_classes(config.model_type)
        arguments = arguments_class.from_dict(config.as_dict())
        self.stage = stage
        # Absent: tied, as mlx-lm's llama and qwen ModelArgs default.
        self.tied_embeddings = config.tie_word_embeddings is not False
        self._model = model_class(arguments)
        self._drop_other_parts()
        self._load_weights(model_dir)
        codes = stored_codes(self._model) if compute_dtype == "float32" and switched_on(CODES_SWITCH_VARIABLE) else {}
        self._model = convert_module(self._model, compute_dtype)
        evaluate(self._model.parameters())
        # float32 weights held as their quantized codes or float16 values, checked bitwise (float16_weights.py).
        self.weight_storage = (
            hold_weights_in_float16(self._model, codes=codes)
            if compute_dtype == "float32"
            else WeightStorage((), (), f"computing in {compute_dtype}")
        )
        del codes  # the codes not kept are freed
        self.layers: list[Block] = cast(list[Block], self._inner()["layers"][stage.start_layer : stage.end_layer])
        self.weight_bytes = sum(array.nbytes for _, array in tree_flatten(self._model.parameters()))
        self._hidden_size = config.hidden_size
        self.batch_invariant = False
        """Whether rows of different requests may share one batch (see `check_batching`)."""
        self.native_attention: NativeAttention | None = None
        """Set when batched attention runs in one native call (see `check_batching`)."""

    def _inner(self) -> nn.Module:
        return cast(nn.Module, self._model["model"])

    def _drop_other_parts(self) -> None:
        """Removes every module outside the stage before weights exist, keeping global layer numbers."""
        inner = self._inner()
        all_layers = cast(list[nn.Module | None], inner["layers"])
        start, end = self.stage.start_layer, self.stage.end_layer
        inner["layers"] = [None] * start + all_layers[start:end]
        needs_embedding = self.stage.is_first or (self.stage.is_last and self.tied_embeddings)
        if not needs_embedding:
            del inner["embed_tokens"]
        if not self.stage.is_last:
            del inner["norm"]
            if "lm_head" in self._model:
                del self._model["lm_head"]

    def _load_weights(self, model_dir: Path) -> None:
        weights: dict[str, mx.array] = {}
        for path in weight_files_for_stage(model_dir, self.stage.start_layer, self.stage.end_layer, self.config):
            loaded = mx.load(str(path))
            if not isinstance(loaded, dict):
                raise ModelLoadError(f"{path} is not a safetensors file")
            weights.update(loaded)
        expected = {name for name, _ in tree_flatten(self._model.parameters())}
        if self.config.quantization is not None:
            self._quantize(self.config.quantization, weights)
            expected = {name for name, _ in tree_flatten(self._model.parameters())}
        kept = {name: array for name, array in weights.items() if name in expected}
        missing = expected - kept.keys()
        if missing:
            raise ModelLoadError(f"weights missing for this stage: {sorted(missing)[:5]}")
        load_module_weights(self._model, list(kept.items()))
        evaluate(self._model.parameters())

    def _quantize(self, quantization: Quantization, weights: dict[str, mx.array]) -> None:
        def quantized_here(path: str, module: nn.Module) -> bool | dict[str, int]:
            override = quantization.modules.get(path)
            if override is not None and not isinstance(override, bool):
                return {"group_size": override.group_size, "bits": override.bits}
            return hasattr(module, "to_quantized") and f"{path}.scales" in weights

        quantize_module(self._model, quantization.group_size, quantization.bits, quantized_here)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    def activation_dtype(self) -> mx.Dtype:
        """The dtype hidden states have between layers (the projections' output dtype)."""
        attention = cast(nn.Module, cast(nn.Module, self.layers[0])["self_attn"])
        projection = cast(nn.Module, attention["q_proj"])
        if isinstance(projection, CompactLinear):
            return mx.float32
        reference = cast(mx.array, projection["scales"] if "scales" in projection else projection["weight"])
        return reference.dtype

    def embed(self, tokens: mx.array) -> mx.array:
        """First stage: token ids (1, rows) -> hidden states (1, rows, hidden)."""
        return cast(nn.Embedding, self._inner()["embed_tokens"])(tokens)

    def run_layers(self, hidden: mx.array, requests: Sequence[RequestRows]) -> mx.array:
        """hidden (1, rows, hidden) of several requests -> hidden after this stage's layers."""
        return forward_rows(self.layers, hidden, requests, batched=self.batch_invariant, native=self.native_attention)

    def use_threads(self, threads: int) -> None:
        """Threads for the native attention's next calls (the BLAS thread count of the batch)."""
        if self.native_attention is not None:
            self.native_attention.threads = threads

    def logits(self, hidden: mx.array) -> mx.array:
        """Last stage: final norm and LM head, (1, rows, hidden) -> (1, rows, vocab)."""
        inner = self._inner()
        normed = cast(nn.RMSNorm, inner["norm"])(hidden)
        if self.tied_embeddings:
            return embedding_as_linear(cast(nn.Module, inner["embed_tokens"]), normed)
        return cast(nn.Linear, self._model["lm_head"])(normed)

    def check_batching(self, max_rows: int, threads: int = 1) -> bool:
        """Decides (and returns) whether requests may share a batch: see `check_batch_invariance`.

        Where they may, also whether the native attention gives MLX's results bitwise here, with
        its requests shared among `threads` threads (the most the shard will use).
        """
        head: list[RowFunction] = [self.logits] if self.stage.is_last else []
        dtype = self.activation_dtype()
        self.batch_invariant = check_batch_invariance(self.layers[0], head, self.hidden_size, dtype, max_rows)
        self.native_attention = None
        native = load_native_attention() if self.batch_invariant and dtype == mx.float32 else None
        if native is not None:
            native.threads = threads
            # Grouped heads (fewer BLAS calls) where they are exact here, else MLX's own call shapes.
            for candidate in (native.grouped(), native):
                if check_batch_invariance(self.layers[0], [], self.hidden_size, dtype, max_rows, native=candidate):
                    self.native_attention = candidate
                    break
        return self.batch_invariant
