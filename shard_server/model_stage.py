"""One pipeline stage of a model: global layers [start, end) built from mlx-lm's model classes.

The first stage also holds the token embedding; the last holds the final norm and the LM head (and
the embedding matrix when embeddings are tied). Only the weight files of the stage are read, and
the model's other layers are dropped before any weight is materialized, so a stage never holds the
whole model. The forward pass runs exactly the ops of the model's own `__call__` (embedding and its
family's scale, each block with the mask and cache of its layer kind, norm, head and its family's
finish: see `stage_adapters` and `layer_kinds`), so splitting is exact by construction; several
requests share a step through `batched_forward`.
"""

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from services.kernel.compute_dtype import ComputeDtype
from services.models.model_config import Quantization, read_model_config
from services.models.model_families import mlx_module_of, unsupported_reason
from services.models.model_files import read_weight_map, weight_files_for_stage
from services.platform.mlx_compute import convert_module
from services.platform.mlx_typing import embedding_as_linear, evaluate, load_module_weights, quantize_module
from shard_server.batched_forward import Block, LayerPlan, RequestRows, RowFunction, forward_rows
from shard_server.batching_check import plan_layers
from shard_server.compact_linear import CompactLinear
from shard_server.float16_weights import (
    CODES_SWITCH_VARIABLE,
    WeightStorage,
    hold_weights_in_float16,
    load_extension,
    switched_on,
)
from shard_server.fused_block import BlockLibrary, fuse_blocks
from shard_server.fused_ops import FusedOps, fuse_layer_ops
from shard_server.layer_kinds import LayerKind, StageCache, UnsupportedCacheError, layer_kind_of
from shard_server.native_attention import NativeAttention
from shard_server.stage_adapters import STAGE_ADAPTERS, StageAdapter
from shard_server.weight_codes import stored_codes

logger = logging.getLogger(__name__)


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


def _model_classes(module_name: str) -> tuple[Callable[[object], nn.Module], ModelArguments]:
    module = importlib.import_module(f"mlx_lm.models.{module_name}")
    return cast(Callable[[object], nn.Module], module.Model), cast(ModelArguments, module.ModelArgs)


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
        reason = unsupported_reason(config)
        module_name = mlx_module_of(config.model_type)
        if reason is not None or module_name is None:
            raise ModelLoadError(reason or f"model type {config.model_type!r} is not supported")
        self._adapter: StageAdapter = STAGE_ADAPTERS[module_name]
        model_class, arguments_class = _model_classes(module_name)
        arguments = arguments_class.from_dict(config.as_dict())
        self.stage = stage
        self._model = model_class(arguments)
        self.layer_kinds: tuple[LayerKind, ...] = self._layer_kinds()
        """This stage's layers' kinds, in order: what the model's own `make_cache` gives them."""
        self.tied_embeddings = self._ties_embeddings(model_dir)
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
        # Llama-form MLPs with their swiglu in one native op, checked bitwise (fused_ops.py).
        self.fused_ops = (
            fuse_layer_ops(self._model)
            if compute_dtype == "float32"
            else FusedOps((), (), f"computing in {compute_dtype}")
        )
        if not self.fused_ops.reason:
            # Llama blocks with q/k/v in one product and the residual add in the next norm (fused_block.py).
            blocks = fuse_blocks(self._model, cast(BlockLibrary | None, load_extension()))
            self.fused_ops = replace(self.fused_ops, blocks=blocks.describe())
        del codes  # the codes not kept are freed
        self.layers: list[Block] = cast(list[Block], self._inner()["layers"][stage.start_layer : stage.end_layer])
        self.weight_bytes = sum(array.nbytes for _, array in tree_flatten(self._model.parameters()))
        self._hidden_size = config.hidden_size
        self.layer_plans: tuple[LayerPlan, ...] = tuple(LayerPlan(kind) for kind in self.layer_kinds)
        """How each layer runs a batch of several requests (see `check_batching`); each alone until checked."""

    @property
    def batch_invariant(self) -> bool:
        """Whether rows of different requests share every layer of this stage (see `check_batching`)."""
        return all(plan.batched for plan in self.layer_plans)

    @batch_invariant.setter
    def batch_invariant(self, batched: bool) -> None:
        self.layer_plans = tuple(LayerPlan(plan.kind, batched) for plan in self.layer_plans)

    @property
    def native_attention(self) -> NativeAttention | None:
        """The native attention, when some layer runs a batch's attention in one native call."""
        return next((plan.native for plan in self.layer_plans if plan.native is not None), None)

    @native_attention.setter
    def native_attention(self, native: NativeAttention | None) -> None:
        self.layer_plans = tuple(
            LayerPlan(
                plan.kind, plan.batched, native if plan.batched and plan.kind.window is None else None, plan.max_rows
            )
            for plan in self.layer_plans
        )

    def _language_model(self) -> nn.Module:
        return self._adapter.language_model(self._model)

    def _inner(self) -> nn.Module:
        return cast(nn.Module, self._language_model()["model"])

    def _layer_kinds(self) -> tuple[LayerKind, ...]:
        """Asks the whole model (before any layer is dropped or any weight exists) for its caches."""
        caches = make_prompt_cache(self._model)
        if len(caches) != self.stage.num_layers:
            raise ModelLoadError(f"the model makes {len(caches)} caches for {self.stage.num_layers} layers")
        try:
            return tuple(
                layer_kind_of(cache, self._adapter.array_masks)
                for cache in caches[self.stage.start_layer : self.stage.end_layer]
            )
        except UnsupportedCacheError as error:
            raise ModelLoadError(str(error)) from error

    def _ties_embeddings(self, model_dir: Path) -> bool:
        """As mlx-lm decides: no `lm_head` module, or (gemma3's rule) no `lm_head` weights to load."""
        language_model = self._language_model()
        if "lm_head" not in language_model:
            return True
        head_prefix = ".".join((*self._adapter.language_model_path, "lm_head", ""))
        if any(key.startswith(head_prefix) for key in read_weight_map(model_dir)):
            return False
        del language_model["lm_head"]
        return True

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
            language_model = self._language_model()
            if "lm_head" in language_model:
                del language_model["lm_head"]

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

    def make_cache(self) -> list[StageCache]:
        return [kind.new_cache() for kind in self.layer_kinds]

    @property
    def keeps_whole_context(self) -> bool:
        """Whether every layer caches every position (prompt prefixes can then be stored and reused)."""
        return all(kind.window is None for kind in self.layer_kinds)

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    def activation_dtype(self) -> mx.Dtype:
        """The dtype hidden states have between layers (the projections' output dtype)."""
        layer = cast(nn.Module, self.layers[0])
        modules = cast(Callable[[], list[tuple[str, nn.Module]]], layer.named_modules)()
        if any(isinstance(module, CompactLinear) for _, module in modules):
            return mx.float32  # float16 weights or 4-bit codes rebuilt in registers: float32 activations
        parameters = tree_flatten(layer.parameters())
        scales = [array for name, array in parameters if name.endswith(".scales")]
        matrices = [array for name, array in parameters if name.endswith("weight") and array.ndim >= 2]
        reference = scales[0] if scales else matrices[0]
        return reference.dtype

    def embed(self, tokens: mx.array) -> mx.array:
        """First stage: token ids (1, rows) -> hidden states (1, rows, hidden)."""
        hidden = cast(nn.Embedding, self._inner()["embed_tokens"])(tokens)
        return self._adapter.scale_embedding(self._language_model(), hidden)

    def run_layers(self, hidden: mx.array, requests: Sequence[RequestRows]) -> mx.array:
        """hidden (1, rows, hidden) of several requests -> hidden after this stage's layers."""
        return forward_rows(self.layers, hidden, requests, self.layer_plans)

    def use_threads(self, threads: int) -> None:
        """Threads for the native attention's next calls (the BLAS thread count of the batch)."""
        if self.native_attention is not None:
            self.native_attention.threads = threads

    def final_hidden(self, hidden: mx.array) -> mx.array:
        """Last stage: the final norm's output, (1, rows, hidden) -> (1, rows, hidden) (what the LM head reads)."""
        return cast(nn.RMSNorm, self._inner()["norm"])(hidden)

    def logits(self, hidden: mx.array) -> mx.array:
        """Last stage: final norm and LM head, (1, rows, hidden) -> (1, rows, vocab)."""
        inner = self._inner()
        normed = self.final_hidden(hidden)
        if self.tied_embeddings:
            logits = embedding_as_linear(cast(nn.Module, inner["embed_tokens"]), normed)
        else:
            logits = cast(nn.Linear, self._language_model()["lm_head"])(normed)
        return self._adapter.finish_logits(self._language_model(), logits)

    def check_batching(self, max_rows: int, threads: int = 1) -> bool:
        """Decides, per layer kind, whether requests may share a batch: see `batching_check.plan_layers`.

        Returns whether every layer of the stage may (`batch_invariant`); where a kind may, also
        whether the native attention gives MLX's results bitwise here, with its requests shared
        among `threads` threads (the most the shard will use).
        """
        head: list[RowFunction] = [self.logits] if self.stage.is_last else []
        self.layer_plans = plan_layers(
            self.layers, self.layer_kinds, head, self.hidden_size, self.activation_dtype(), max_rows, threads
        )
        return self.batch_invariant
