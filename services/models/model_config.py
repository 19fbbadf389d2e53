"""A model's config.json, parsed once into one typed, frozen `ModelConfig`; no MLX here.

Every reader of a model directory (store manifest, placement cost, admission, stage loader, gateway)
takes its figures from `read_model_config(model_dir)`, so they cannot disagree.

Rules, one for every family:
- Language settings: a multimodal config keeps them under `text_config`; its keys win, and the
  top level fills in what it lacks (mlx-lm builds the language model from `text_config`). Families
  whose mlx-lm `ModelArgs` supply defaults that Hugging Face leaves out of the file (gemma3) get
  those defaults, as mlx-lm does.
- Context length: the first of `CONTEXT_LENGTH_KEYS` that the config sets (null counts as unset),
  else `DEFAULT_CONTEXT_LENGTH`.
- Attention kind per layer: `layer_types` when given; else `sliding_window_pattern` (every p-th
  layer global, the rest sliding: gemma3, cohere2); else `use_sliding_window` (layers from
  `max_window_layers` on slide: Qwen2's rule); else gpt_oss alternates sliding and full layers (its
  mlx-lm default); else every layer attends to the whole context. A bare `sliding_window` (Mistral)
  is ignored, as mlx-lm's llama ignores it, and gemma2's windows too (mlx-lm's gemma2 caches and
  attends to the whole context on every layer).
- A missing or mistyped required field raises `ModelConfigError` naming the file and the key.
"""

import json
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue

CONFIG_FILE = "config.json"

CONTEXT_LENGTH_KEYS = (
    "max_position_embeddings",
    "max_sequence_length",
    "n_positions",
    "seq_length",
    "max_seq_len",
    "n_ctx",
    "model_max_length",
)
"""Where families state their context length, in the order tried (the gateway's four first)."""

DEFAULT_CONTEXT_LENGTH = 4096
"""The context length of a config that names none."""

LayerAttentionKind = Literal["full", "sliding", "other"]
"""How a layer attends: to the whole context, to a sliding window of it, or in a way strata does not
model yet (linear attention, convolution, ...; counted as full attention, an upper bound)."""

_LAYER_TYPE_KINDS: dict[str, LayerAttentionKind] = {
    "full_attention": "full",
    "attention": "full",
    "sliding_attention": "sliding",
}

_EXPERT_COUNT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts")

_WHOLE_CONTEXT_TYPES = frozenset({"gemma2"})
"""Families whose config names windows that mlx-lm's classes ignore (every layer keeps the context)."""

QWEN2_MAX_WINDOW_LAYERS = 28
"""Hugging Face Qwen2's default for `max_window_layers`: the layers below it never slide."""

# Defaults mlx-lm's ModelArgs give and Hugging Face omits from the file (gemma3's text config often
# names only hidden_size, intermediate_size, num_hidden_layers and sliding_window).
_TEXT_MODEL_DEFAULTS: dict[str, dict[str, JsonValue]] = {
    "gemma3_text": {
        "hidden_size": 1152,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "vocab_size": 262144,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 32768,
    },
}
# mlx-lm's gemma3 wrapper: the top-level vocab size (default 262208) replaces the text config's,
# and the head counts default to 8 and 4 before gemma3_text's own defaults apply.
_GEMMA3_VOCAB_SIZE = 262208
_GEMMA3_HEAD_DEFAULTS: dict[str, JsonValue] = {"num_attention_heads": 8, "num_key_value_heads": 4}


class ModelConfigError(ValueError):
    """config.json is missing, not JSON, or lacks (or mistypes) a field strata needs."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class ModuleQuantization(_Frozen):
    """A per-module override of the quantization settings (e.g. an 8-bit embedding)."""

    group_size: int
    bits: int
    mode: str | None = None


class Quantization(_Frozen):
    """mlx-lm's `quantization` section."""

    group_size: int
    bits: int
    mode: str | None = None
    modules: dict[str, ModuleQuantization | bool] = Field(default_factory=dict[str, ModuleQuantization | bool])
    """Module path -> its own settings, or whether it is quantized at all."""

    def group_size_of(self, module_path: str) -> int:
        override = self.modules.get(module_path)
        return override.group_size if isinstance(override, ModuleQuantization) else self.group_size


class LatentAttention(_Frozen):
    """Multi-head latent attention (DeepSeek V2/V3): the cache holds one compressed latent per token."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None


class Experts(_Frozen):
    """A mixture-of-experts feed-forward."""

    count: int
    """Routed experts per MoE layer (n_routed_experts, num_experts or num_local_experts)."""
    per_token: int | None
    """Experts each token is routed to (num_experts_per_tok or experts_per_token)."""
    intermediate_size: int | None
    """moe_intermediate_size, where it differs from the dense intermediate_size."""
    shared_count: int | None


class ModelConfig(_Frozen):
    """What strata knows about a model from its config.json."""

    source: Path
    """The config.json it was read from, for messages."""
    model_type: str
    """The top-level type: the mlx-lm module that builds the model."""
    text_model_type: str | None
    """The type of a nested text config (gemma3's "gemma3_text"), when there is one."""
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    """`head_dim` when given, else hidden_size // num_attention_heads."""
    context_length: int
    context_length_key: str | None
    """The key the context length came from; None when it is the default."""
    tie_word_embeddings: bool | None
    """None when the config does not say (each reader knows its default)."""
    dtype: str | None
    """torch_dtype (or dtype) as written, e.g. "bfloat16"."""
    quantization: Quantization | None
    eos_token_ids: tuple[int, ...]
    layer_attention: tuple[LayerAttentionKind, ...]
    """Indexed by global layer number."""
    sliding_window: int | None
    """Tokens a sliding layer attends to (and caches); set whenever a layer slides."""
    latent_attention: LatentAttention | None
    experts: Experts | None
    raw: dict[str, JsonValue] = Field(repr=False)
    """The file as parsed; never mutate it (`as_dict` gives a copy)."""

    def as_dict(self) -> dict[str, object]:
        """A fresh copy of the file as parsed, for mlx-lm's `ModelArgs.from_dict` (which mutates nested
        dicts) and for writing the config elsewhere."""
        return cast(dict[str, object], json.loads(json.dumps(self.raw)))

    def window_of(self, layer: int) -> int | None:
        """Most tokens layer `layer` caches: the window for a sliding layer, None (unbounded) otherwise."""
        return self.sliding_window if self.layer_attention[layer] == "sliding" else None


def read_model_config(model_dir: Path) -> ModelConfig:
    """Parses `model_dir/config.json`. Raises `ModelConfigError`."""
    path = model_dir / CONFIG_FILE
    try:
        loaded: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelConfigError(f"{path} cannot be read as JSON: {error}") from error
    return parse_model_config(loaded, path)


def parse_model_config(content: object, source: Path) -> ModelConfig:
    """A `ModelConfig` from the parsed JSON of `source` (a file, or one about to be written)."""
    if not isinstance(content, dict):
        raise ModelConfigError(f"{source} is not a JSON object")
    raw = cast(dict[str, JsonValue], content)
    fields = _Fields(_language_settings(raw, source), source)
    top = _Fields(raw, source)
    model_type = top.required_str("model_type")
    num_layers = fields.positive_int("num_hidden_layers")
    hidden_size = fields.positive_int("hidden_size")
    heads = fields.positive_int("num_attention_heads")
    context_length, context_key = _context_length(fields)
    layer_attention, window = _layer_attention(fields, num_layers, _text_model_type(raw, source) or model_type)
    return ModelConfig(
        source=source,
        model_type=model_type,
        text_model_type=_text_model_type(raw, source),
        num_layers=num_layers,
        hidden_size=hidden_size,
        vocab_size=fields.positive_int("vocab_size"),
        num_attention_heads=heads,
        num_key_value_heads=fields.optional_positive_int("num_key_value_heads") or heads,
        head_dim=fields.optional_positive_int("head_dim") or hidden_size // heads,
        context_length=context_length,
        context_length_key=context_key,
        tie_word_embeddings=fields.optional_bool("tie_word_embeddings"),
        dtype=fields.optional_str("torch_dtype") or fields.optional_str("dtype"),
        quantization=_quantization(top),
        eos_token_ids=_eos_token_ids(fields),
        layer_attention=layer_attention,
        sliding_window=window,
        latent_attention=_latent_attention(fields),
        experts=_experts(fields),
        raw=raw,
    )


class _Fields:
    """Typed reads of one JSON object; every refusal names the file and the key."""

    def __init__(self, values: dict[str, JsonValue], source: Path) -> None:
        self.values = values
        self.source = source

    def error(self, key: str, expected: str) -> ModelConfigError:
        if self.values.get(key) is None:
            return ModelConfigError(f"{self.source} has no {key!r} ({expected} required)")
        return ModelConfigError(f"{self.source}: {key!r} is {self.values[key]!r}, not {expected}")

    def required_str(self, key: str) -> str:
        value = self.values.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, "a non-empty string")
        return value

    def positive_int(self, key: str) -> int:
        value = self.optional_positive_int(key)
        if value is None:
            raise self.error(key, "a positive integer")
        return value

    def optional_positive_int(self, key: str) -> int | None:
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.error(key, "a positive integer")
        return value

    def optional_bool(self, key: str) -> bool | None:
        value = self.values.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.error(key, "true or false")
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(key, "a string")
        return value

    def optional_object(self, key: str) -> "_Fields | None":
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, "an object")
        return _Fields(value, self.source)


def _language_settings(raw: dict[str, JsonValue], source: Path) -> dict[str, JsonValue]:
    """The language model's settings: the text config over the top level, then mlx-lm's defaults."""
    text_config = _Fields(raw, source).optional_object("text_config")
    # null means unset, so a null in the text config lets the top level's value through.
    top_level = {key: value for key, value in raw.items() if key != "text_config" and value is not None}
    text = {key: value for key, value in (text_config.values if text_config else {}).items() if value is not None}
    merged = {**top_level, **text}
    if raw.get("model_type") == "gemma3":
        top_vocab = raw.get("vocab_size")
        merged = {
            **_GEMMA3_HEAD_DEFAULTS,
            **merged,
            "vocab_size": _GEMMA3_VOCAB_SIZE if top_vocab is None else top_vocab,
        }
    defaults = _TEXT_MODEL_DEFAULTS.get(_text_model_type(raw, source) or str(raw.get("model_type")), {})
    return {**defaults, **merged}


def _text_model_type(raw: dict[str, JsonValue], source: Path) -> str | None:
    text_config = _Fields(raw, source).optional_object("text_config")
    if text_config is None:
        return None
    text_type = text_config.optional_str("model_type")
    if text_type is None and raw.get("model_type") == "gemma3":
        return "gemma3_text"  # what mlx-lm's gemma3 builds
    return text_type


def _context_length(fields: _Fields) -> tuple[int, str | None]:
    for key in CONTEXT_LENGTH_KEYS:
        value = fields.optional_positive_int(key)
        if value is not None:
            return value, key
    return DEFAULT_CONTEXT_LENGTH, None


def _layer_attention(
    fields: _Fields, num_layers: int, model_type: str
) -> tuple[tuple[LayerAttentionKind, ...], int | None]:
    layer_types = fields.values.get("layer_types")
    pattern = fields.optional_positive_int("sliding_window_pattern")
    kinds: list[LayerAttentionKind]
    if model_type in _WHOLE_CONTEXT_TYPES:
        kinds = ["full"] * num_layers
    elif layer_types is not None:
        if not isinstance(layer_types, list) or not all(isinstance(kind, str) for kind in layer_types):
            raise fields.error("layer_types", "a list of strings")
        if len(layer_types) != num_layers:
            raise ModelConfigError(
                f"{fields.source}: 'layer_types' names {len(layer_types)} layers, the model has {num_layers}"
            )
        kinds = [_LAYER_TYPE_KINDS.get(str(kind), "other") for kind in layer_types]
    elif pattern is not None:
        kinds = ["full" if layer % pattern == pattern - 1 else "sliding" for layer in range(num_layers)]
    elif fields.optional_bool("use_sliding_window"):
        first_sliding = fields.values.get("max_window_layers", QWEN2_MAX_WINDOW_LAYERS)
        if not isinstance(first_sliding, int) or isinstance(first_sliding, bool):
            raise fields.error("max_window_layers", "an integer")
        kinds = ["sliding" if layer >= first_sliding else "full" for layer in range(num_layers)]
    elif model_type == "gpt_oss":
        kinds = ["sliding" if layer % 2 == 0 else "full" for layer in range(num_layers)]
    else:
        kinds = ["full"] * num_layers
    if "sliding" not in kinds:
        return tuple(kinds), None
    return tuple(kinds), fields.positive_int("sliding_window")


def _quantization(top: _Fields) -> Quantization | None:
    section = top.optional_object("quantization")
    if section is None:
        return None
    modules: dict[str, ModuleQuantization | bool] = {}
    for path, value in section.values.items():
        if isinstance(value, bool):
            modules[path] = value
        elif isinstance(value, dict):
            override = _Fields(value, top.source)
            modules[path] = ModuleQuantization(
                group_size=_quantization_int(override, "group_size", path),
                bits=_quantization_int(override, "bits", path),
                mode=override.optional_str("mode"),
            )
    return Quantization(
        group_size=_quantization_int(section, "group_size", "quantization"),
        bits=_quantization_int(section, "bits", "quantization"),
        mode=section.optional_str("mode"),
        modules=modules,
    )


def _quantization_int(section: _Fields, key: str, where: str) -> int:
    try:
        return section.positive_int(key)
    except ModelConfigError as error:
        raise ModelConfigError(f"{error} (in {where!r})") from None


def _eos_token_ids(fields: _Fields) -> tuple[int, ...]:
    value = fields.values.get("eos_token_id")
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise fields.error("eos_token_id", "a token id or a list of token ids")
    return tuple(cast(list[int], items))


def _latent_attention(fields: _Fields) -> LatentAttention | None:
    kv_lora_rank = fields.optional_positive_int("kv_lora_rank")
    if kv_lora_rank is None:
        return None
    return LatentAttention(
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=fields.positive_int("qk_rope_head_dim"),
        qk_nope_head_dim=fields.positive_int("qk_nope_head_dim"),
        v_head_dim=fields.positive_int("v_head_dim"),
        q_lora_rank=fields.optional_positive_int("q_lora_rank"),
    )


def _experts(fields: _Fields) -> Experts | None:
    # A dense config may say 0 experts: that is no mixture.
    key = next((key for key in _EXPERT_COUNT_KEYS if fields.values.get(key) not in (None, 0)), None)
    if key is None:
        return None
    return Experts(
        count=fields.positive_int(key),
        per_token=fields.optional_positive_int("num_experts_per_tok")
        or fields.optional_positive_int("experts_per_token"),
        intermediate_size=fields.optional_positive_int("moe_intermediate_size"),
        shared_count=_optional_count(fields, "n_shared_experts"),
    )


def _optional_count(fields: _Fields, key: str) -> int | None:
    value = fields.values.get(key)
    return None if value in (None, 0) else fields.positive_int(key)
