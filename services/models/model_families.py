"""Which model families the shards can split, decided from config.json alone (no MLX).

One answer for every caller: `strata models import` and the gateway refuse a family here, before
any weight is stored, and the shard's stage loader refuses the same ones, so a stored model never
waits for a placement that can never load.
"""

from services.models.model_config import ModelConfig

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3"})
"""mlx-lm model types whose stages `shard_server.model_stage` builds."""


class UnsupportedModelError(ValueError):
    """The model is of a family, or uses a feature, that strata's shards cannot run."""


def unsupported_reason(config: ModelConfig) -> str | None:
    """Why the shards cannot run this model, or None when they can."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"model type {config.model_type!r} is not supported; supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    if any(kind != "full" for kind in config.layer_attention) or config.raw.get("use_sliding_window") is True:
        return "models with sliding-window attention are not supported yet"
    return None


def check_supported(config: ModelConfig) -> None:
    """Raises `UnsupportedModelError` naming the config file and the reason."""
    reason = unsupported_reason(config)
    if reason is not None:
        raise UnsupportedModelError(f"{config.source}: {reason}")
