"""The KV cache a model needs, per layer, from its `ModelConfig`; no MLX here.

Counted in float32 (an upper bound for every compute dtype). Per token and layer:
- plain attention: keys and values, 2 * num_key_value_heads * head_dim;
- multi-head latent attention: one latent, kv_lora_rank + qk_rope_head_dim (mlx-lm caches the
  compressed kv and the rotary key part, not per-head keys and values);
- a sliding layer holds at most `window` tokens per sequence; a full layer the whole context.
Layers of a kind strata does not model count as full attention.

Room per layer (what placement reserves): the first shard admits requests while their tokens fit
`context_length x concurrent_rows`, so a full layer needs that many tokens' room. A sliding layer
needs at most `window` tokens per running request: with at most `WINDOWED_MAX_SEQUENCES` requests
running at once (the cap the coordinator hands the first shard for such a model), it needs
min(context x rows, WINDOWED_MAX_SEQUENCES x window) tokens' room, less than a full layer whenever
windows are short.
"""

from pydantic import BaseModel, ConfigDict

from services.models.model_config import ModelConfig

FLOAT32_BYTES = 4
WINDOWED_MAX_SEQUENCES = 32
"""Requests a first shard runs at once in a model whose sliding layers are reserved less room than
its full ones (the room of a sliding layer is counted for this many windows)."""


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
    """The KV budget of admission in bytes per layer: `concurrent_rows` whole contexts of the most
    demanding layer's tokens (the first shard divides it by the bytes per token)."""
    return kv_bytes_per_token_per_layer(config) * context_length * concurrent_rows


def layer_kv_room(config: ModelConfig, context_length: int, concurrent_rows: int) -> tuple[tuple[int, ...], int]:
    """Per global layer, the KV bytes placement reserves (see the module's note), and the cap on
    running requests that room assumes (0: none, when no sliding layer is reserved less)."""
    budget_tokens = context_length * concurrent_rows
    rooms: list[int] = []
    capped = False
    for cache in layer_kv_caches(config):
        tokens = budget_tokens
        if cache.window is not None:
            windowed = WINDOWED_MAX_SEQUENCES * min(cache.window, context_length)
            if windowed < budget_tokens:
                tokens, capped = windowed, True
        rooms.append(cache.bytes_per_token * tokens)
    return tuple(rooms), WINDOWED_MAX_SEQUENCES if capped else 0


def _bytes_per_token(config: ModelConfig) -> int:
    latent = config.latent_attention
    if latent is not None:
        return (latent.kv_lora_rank + latent.qk_rope_head_dim) * FLOAT32_BYTES
    return 2 * config.num_key_value_heads * config.head_dim * FLOAT32_BYTES
