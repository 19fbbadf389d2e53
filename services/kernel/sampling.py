"""Sampling options shared by the gateway (which validates them) and the last shard (which applies them)."""

from pydantic import BaseModel, ConfigDict


class SamplingOptions(BaseModel):
    """How the last shard turns logits into a token; mirrors mlx-lm's `make_sampler`."""

    model_config = ConfigDict(frozen=True, strict=True)

    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus threshold; values outside (0, 1) disable it."""
    top_k: int = 0
    """0 disables it."""
    seed: int = 0
    """Seed of the request's own random key."""
    key_position: int = 0
    """Samples already drawn from that key (non-zero when a request resumes)."""
    grammar: str | None = None
    """Structured output: an llguidance grammar (its JSON or Lark form) the output must match; the last
    shard masks each step's logits to the tokens it allows. None: unconstrained."""
