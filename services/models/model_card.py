"""A stored model's card: what it is and what it needs, read from its files without loading a tensor.

`model_card(model_id, model_dir)` is pure over the directory's config.json, safetensors headers,
`generation_config.json` and chat template; `strata models list|show` render it.
"""

import json
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict

from services.kernel.compute_dtype import BYTES_PER_PARAMETER
from services.kernel.ids import ModelId
from services.models.model_families import unsupported_reason
from services.models.model_files import read_manifest

GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

SamplingKey = Literal["temperature", "top_p", "top_k"]
_SAMPLING_KEYS: tuple[SamplingKey, ...] = ("temperature", "top_p", "top_k")
# Templates that render tool calls read `tools`; reasoning templates name a think block or a switch for it.
_TOOL_MARKERS = ("tools", "tool_calls")
_REASONING_MARKERS = ("<think>", "enable_thinking", "reasoning_content", "thinking")


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    id: str
    architecture: str
    num_layers: int
    parameters: int
    stored_bytes: int
    bytes: dict[str, int]
    """Weight bytes per compute dtype ("stored" is the files as they are)."""
    context_length: int
    quantization: str | None
    """e.g. "4-bit, group 64"; None for unquantized weights."""
    stored_dtype: str | None
    has_chat_template: bool
    supports_tools: bool
    supports_reasoning: bool
    generation_defaults: dict[str, float | int]
    """temperature, top_p, top_k from generation_config.json, where it sets them."""
    runnable: bool
    unsupported_reason: str | None


def model_card(model_id: ModelId, model_dir: Path) -> ModelCard:
    manifest = read_manifest(model_dir)
    config = manifest.config
    parameters = manifest.total_parameter_count
    quantization = config.quantization
    template = chat_template_text(model_dir)
    reason = unsupported_reason(config)
    return ModelCard(
        id=model_id,
        architecture=config.model_type,
        num_layers=config.num_layers,
        parameters=parameters,
        stored_bytes=manifest.total_stored_bytes,
        bytes={
            "stored": manifest.total_stored_bytes,
            **{dtype: parameters * size for dtype, size in BYTES_PER_PARAMETER.items()},
        },
        context_length=config.context_length,
        quantization=None if quantization is None else f"{quantization.bits}-bit, group {quantization.group_size}",
        stored_dtype=config.dtype,
        has_chat_template=template is not None,
        supports_tools=template is not None and any(marker in template for marker in _TOOL_MARKERS),
        supports_reasoning=template is not None and any(marker in template for marker in _REASONING_MARKERS),
        generation_defaults=generation_defaults(model_dir),
        runnable=reason is None,
        unsupported_reason=reason,
    )


def chat_template_text(model_dir: Path) -> str | None:
    """The chat template: `chat_template.jinja`, else tokenizer_config.json's `chat_template` (a string, or
    a list of named templates, all joined)."""
    jinja = model_dir / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tokenizer_config = _json_object(model_dir / TOKENIZER_CONFIG_FILE)
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        entries = cast(list[object], template)
        parts = [
            str(cast(dict[str, object], entry).get("template", "")) for entry in entries if isinstance(entry, dict)
        ]
        return "\n".join(parts) or None
    return None


def generation_defaults(model_dir: Path) -> dict[str, float | int]:
    """The sampling defaults generation_config.json sets (numbers only; a wrong type is left out)."""
    content = _json_object(model_dir / GENERATION_CONFIG_FILE)
    defaults: dict[str, float | int] = {}
    for key in _SAMPLING_KEYS:
        value = content.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            defaults[key] = value
    return defaults


def _json_object(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    try:
        loaded: object = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}  # an unreadable optional file says nothing; the card shows no defaults
    if not isinstance(loaded, dict):
        return {}
    return cast(dict[str, object], loaded)


def render_card_table(cards: list[ModelCard]) -> str:
    """`strata models list`: one row per model."""
    rows = [("ID", "ARCHITECTURE", "LAYERS", "PARAMETERS", "STORED", "CONTEXT", "QUANTIZATION")]
    rows += [
        (
            card.id,
            card.architecture if card.runnable else f"{card.architecture} (unsupported)",
            str(card.num_layers),
            f"{card.parameters / 1e6:.1f}M",
            f"{card.stored_bytes / 2**20:.1f} MiB",
            str(card.context_length),
            card.quantization or "-",
        )
        for card in cards
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def render_card(card: ModelCard) -> str:
    """`strata models show ID`."""
    lines = [f"{key}: {value}" for key, value in card.model_dump().items() if key != "bytes"]
    lines += [f"bytes ({dtype}): {size}" for dtype, size in card.bytes.items()]
    return "\n".join(lines)
