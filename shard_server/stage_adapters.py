"""What each family's mlx-lm `__call__` does outside its blocks, so a stage can do exactly the same.

A stage runs the embedding, the blocks and the head itself (see `model_stage`); the blocks are the
model's own, and the masks and caches per layer come from the model (`layer_kinds`). What remains
differs by family and is listed here, one adapter per `mlx_lm.models` module, keyed as
`services.models.model_families.FAMILY_MODULES` names them:

- where the language model sits (gemma3's wrapper nests it under `language_model`);
- the embedding's scale (gemma: sqrt(hidden size), gemma3 rounded through bfloat16 as mlx-lm does;
  granite: `embedding_multiplier`);
- what follows the LM head (gemma2: the final logit softcap; granite: division by `logits_scaling`);
- whether the family's masks are arrays even where "causal" would do (gemma2, deepseek_v3).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import mlx.core as mx
from mlx import nn

HiddenTransform = Callable[[nn.Module, mx.array], mx.array]
"""(the language model, i.e. the module holding `model` and the LM head; an array) -> an array."""


def _unchanged(_language_model: nn.Module, values: mx.array) -> mx.array:
    return values


def _setting(module: nn.Module, *names: str) -> float:
    """A number the model's constructor kept, e.g. `args.hidden_size` or `logits_scaling`."""
    value: object = module
    for name in names:
        value = cast(object, getattr(value, name))
    if not isinstance(value, int | float):
        raise TypeError(f"{'.'.join(names)} is {value!r}, not a number")
    return float(value)


def _gemma2_embedding(language_model: nn.Module, hidden: mx.array) -> mx.array:
    return hidden * (_setting(language_model, "args", "hidden_size") ** 0.5)


def _gemma3_embedding(language_model: nn.Module, hidden: mx.array) -> mx.array:
    scale = mx.array(_setting(language_model, "args", "hidden_size") ** 0.5, mx.bfloat16).astype(hidden.dtype)
    return hidden * scale


def _gemma2_logits(language_model: nn.Module, logits: mx.array) -> mx.array:
    cap = _setting(language_model, "final_logit_softcapping")
    return mx.tanh(logits / cap) * cap


def _granite_embedding(language_model: nn.Module, hidden: mx.array) -> mx.array:
    return hidden * _setting(language_model, "model", "embedding_multiplier")


def _granite_logits(language_model: nn.Module, logits: mx.array) -> mx.array:
    return logits / _setting(language_model, "logits_scaling")


@dataclass(frozen=True)
class StageAdapter:
    language_model_path: tuple[str, ...] = ()
    """Where the module with `model` (embedding, layers, norm) and `lm_head` sits in the built model."""
    scale_embedding: HiddenTransform = _unchanged
    finish_logits: HiddenTransform = _unchanged
    array_masks: bool = False

    def language_model(self, model: nn.Module) -> nn.Module:
        module = model
        for name in self.language_model_path:
            module = cast(nn.Module, module[name])
        return module


_PLAIN = StageAdapter()
_GEMMA3_TEXT = StageAdapter(scale_embedding=_gemma3_embedding)

STAGE_ADAPTERS: dict[str, StageAdapter] = {
    "llama": _PLAIN,
    "qwen2": _PLAIN,
    "qwen3": _PLAIN,
    "qwen3_moe": _PLAIN,
    "phi3": _PLAIN,
    "olmo2": _PLAIN,
    "glm4": _PLAIN,
    "gpt_oss": _PLAIN,
    "deepseek_v3": StageAdapter(array_masks=True),
    "gemma2": StageAdapter(scale_embedding=_gemma2_embedding, finish_logits=_gemma2_logits, array_masks=True),
    "gemma3_text": _GEMMA3_TEXT,
    "gemma3": StageAdapter(language_model_path=("language_model",), scale_embedding=_gemma3_embedding),
    "granite": StageAdapter(scale_embedding=_granite_embedding, finish_logits=_granite_logits),
}
"""mlx-lm module -> its adapter."""
