"""The KV cache a model needs, per layer, from its `ModelConfig`; no MLX here.

Counted in float32 (an upper bound for every compute dtype). Per token and layer:
- plain attention: keys and values, 2 * num_key_value_heads * head_dim;
- multi-head latent attention: one latent, kv_lora_rank + qk_rope_head_dim (mlx-lm caches the
  compressed kv and the rotary key part, not per-head keys and values);
- a sliding layer holds at most `window` tokens; a full layer the whole context.
Layers of a kind strata does not model count as full attention.
"""

from pydantic import BaseModel, ConfigDict

from services.models.model_config import ModelConfig

FLOAT32_BYTES = 4


class LayerKvCache(BaseModel):
    """The cache one layer keeps for one sequence."""

    model_config = ConfigDict(frozen=True, strict=True)

    bytes_per_token: int
    window: int | None
    """Most tokens it holds (a sliding layer); None: every token of the context."""

    def bytes_for(self, tokens: int) -> int:
        """Bytes it holds once a sequence has `tokens` tokens."""
        held = tokens if self.window is None else min(tokens, self.window)
        return self.bytes_per_token * held


def layer_kv_caches(config: ModelConfig) -> tuple[LayerKvCache, ...]:
    """One entry per global layer."""
    per_token = _bytes_per_token(config)
    return tuple(
        LayerKvCache(bytes_per_token=per_token, window=config.window_of(layer)) for layer in range(config.num_layers)
    )


def kv_bytes_per_token_per_layer(config: ModelConfig) -> int:
    """What one more token costs the most demanding layer: admission counts tokens in it."""
    return max(cache.bytes_per_token for cache in layer_kv_caches(config))


def kv_bytes_per_layer(config: ModelConfig, context_length: int, concurrent_rows: int) -> int:
    """The most any one layer holds for `concurrent_rows` sequences of `context_length` tokens."""
    return max(cache.bytes_for(context_length) for cache in layer_kv_caches(config)) * concurrent_rows


def _bytes_per_token(config: ModelConfig) -> int:
    latent = config.latent_attention
    if latent is not None:
        return (latent.kv_lora_rank + latent.qk_rope_head_dim) * FLOAT32_BYTES
    return 2 * config.num_key_value_heads * config.head_dim * FLOAT32_BYTES
