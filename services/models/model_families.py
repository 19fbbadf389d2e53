"""Which model families the shards can split, decided from config.json alone (no MLX).

One answer for every caller: `strata models import`, `strata models pull` and the gateway refuse a
family here, before any weight is stored, and the shard's stage loader refuses the same ones, so a
stored model never waits for a placement that can never load.
"""

from services.models.model_config import ModelConfig

FAMILY_MODULES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3_moe",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3_text",
    "gemma3": "gemma3",
    "phi3": "phi3",
    "granite": "granite",
    "olmo2": "olmo2",
    "glm4": "glm4",
    "gpt_oss": "gpt_oss",
    "deepseek_v3": "deepseek_v3",
}
"""config.json's `model_type` -> the `mlx_lm.models` module that builds it, as mlx-lm's own
`MODEL_REMAPPING` (mlx_lm/utils.py) maps it (mistral is built by llama's classes); a unit test
checks the two agree. Each module has a stage adapter in `shard_server.stage_adapters`."""

SUPPORTED_MODEL_TYPES = frozenset(FAMILY_MODULES)

SLIDING_FAMILIES = frozenset({"llama", "gemma3_text", "gemma3", "gpt_oss"})
"""mlx-lm modules whose classes give sliding layers a window (a rotating cache and a windowed mask).
The others attend to the whole context on every layer, whatever config.json says."""

QUANTIZATION_MODES = frozenset({"affine"})
"""Quantization modes a stage can rebuild (mlx's default; microscaling modes such as mxfp4 not yet)."""


class UnsupportedModelError(ValueError):
    """The model is of a family, or uses a feature, that strata's shards cannot run."""


def mlx_module_of(model_type: str) -> str | None:
    return FAMILY_MODULES.get(model_type)


def unsupported_reason(config: ModelConfig) -> str | None:
    """Why the shards cannot run this model, or None when they can."""
    module = mlx_module_of(config.model_type)
    if module is None:
        return (
            f"model type {config.model_type!r} is not supported; supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    if "other" in config.layer_attention:
        return "models with layers other than full or sliding-window attention are not supported yet"
    slides = "sliding" in config.layer_attention or config.raw.get("use_sliding_window") is True
    if slides and module not in SLIDING_FAMILIES:
        # mlx-lm would run every layer over the whole context: not the model as it was trained.
        return f"sliding-window attention is not supported for model type {config.model_type!r} (mlx-lm ignores it)"
    mode = _unsupported_quantization_mode(config)
    if mode is not None:
        return f"quantization mode {mode!r} is not supported yet (only {', '.join(sorted(QUANTIZATION_MODES))})"
    return None


def check_supported(config: ModelConfig) -> None:
    """Raises `UnsupportedModelError` naming the config file and the reason."""
    reason = unsupported_reason(config)
    if reason is not None:
        raise UnsupportedModelError(f"{config.source}: {reason}")


def _unsupported_quantization_mode(config: ModelConfig) -> str | None:
    quantization = config.quantization
    if quantization is None:
        return None
    overrides = [override.mode for override in quantization.modules.values() if not isinstance(override, bool)]
    modes = {mode for mode in (quantization.mode, *overrides) if mode is not None}
    return min(modes - QUANTIZATION_MODES, default=None)
