"""Token sampling on the last shard, with a random key per request.

mlx-lm samples from MLX's global random state after `mx.random.seed(seed)`; each draw splits that
key. Here every request keeps its own key and splits it the same way, so a seeded request draws the
same tokens as mlx-lm run alone, whatever other traffic the shard serves. The filters are mlx-lm's
own compiled functions; only the final draw takes the key explicitly (checked bitwise equal).
"""

from functools import partial

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from services.mlx_typing import scalar_int
from services.sampling import SamplingOptions


@partial(mx.compile)
def _categorical_with_key(logits: mx.array, inverse_temperature: float, key: mx.array) -> mx.array:
    return mx.random.categorical(logits * inverse_temperature, key=key)


class RequestSampler:
    """Turns the last position's logits into a token; owns the request's random key."""

    def __init__(self, options: SamplingOptions) -> None:
        self.options = options
        self.key_position = options.key_position
        self._key = mx.random.key(options.seed)
        for _ in range(options.key_position):
            self._key, _ = mx.random.split(self._key)

    def sample(self, logits: mx.array) -> int:
        """logits: (1, positions, vocab); samples from the last position as mlx-lm's generate_step."""
        last = logits[:, -1, :]  # (1, vocab)
        logprobs = last - mx.logsumexp(last, keepdims=True)
        if self.options.temperature == 0:
            return scalar_int(mx.argmax(logprobs, axis=-1))
        if 0 < self.options.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.options.top_p)
        if self.options.top_k > 0:
            logprobs = apply_top_k(logprobs, self.options.top_k)
        self._key, draw_key = mx.random.split(self._key)
        self.key_position += 1
        token = _categorical_with_key(logprobs, 1.0 / self.options.temperature, draw_key)
        return scalar_int(token)
