"""Sampling options shared by the gateway (which validates them) and the last shard (which applies them)."""

from pydantic import BaseModel, ConfigDict

MAX_TOP_LOGPROBS = 20
"""OpenAI's limit on `top_logprobs`."""
DEFAULT_REPETITION_CONTEXT_SIZE = 20
"""mlx-lm's default window of recent tokens for the repetition penalty."""


class SamplingOptions(BaseModel):
    """How the last shard turns logits into a token; mirrors mlx-lm's `make_sampler` and
    `make_logits_processors` (the penalties and logit bias run before the log-softmax, as there)."""

    model_config = ConfigDict(frozen=True, strict=True)

    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus threshold; values outside (0, 1) disable it."""
    top_k: int = 0
    """0 disables it."""
    min_p: float = 0.0
    """min-p threshold (scaled by the top token's probability); 0 disables it."""
    seed: int = 0
    """Seed of the request's own random key."""
    key_position: int = 0
    """Samples already drawn from that key (non-zero when a request resumes)."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits, token ids distinct."""
    repetition_penalty: float = 0.0
    """mlx-lm's multiplicative penalty over the last `repetition_context_size` tokens, prompt included; 0 disables."""
    repetition_context_size: int = DEFAULT_REPETITION_CONTEXT_SIZE
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from each token generated so far (once); the prompt is not counted."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted once per time a token was generated so far; the prompt is not counted."""
    logprobs: bool = False
    """Report each sampled token's logprob."""
    top_logprobs: int = 0
    """And the best this many (0 to `MAX_TOP_LOGPROBS`), best first."""
    penalty_prompt_tokens: tuple[int, ...] = ()
    """The prompt's last `repetition_context_size` tokens: set by the first shard, for the repetition penalty."""
    return_embedding: bool = False
    """Also return the final norm's output at each sampled position (the embeddings route asks for one)."""
    grammar: str | None = None
    """Structured output: an llguidance grammar (its JSON or Lark form) the output must match; the last
    shard masks each step's logits to the tokens it allows. None: unconstrained."""

    @property
    def has_logits_processors(self) -> bool:
        return bool(self.logit_bias or self.repetition_penalty or self.presence_penalty or self.frequency_penalty)

    def with_prompt(self, prompt_tokens: tuple[int, ...]) -> "SamplingOptions":
        """These options with the prompt tail the repetition penalty looks back on (none without one)."""
        if not self.repetition_penalty or self.repetition_context_size < 1:
            return self
        return self.model_copy(update={"penalty_prompt_tokens": prompt_tokens[-self.repetition_context_size :]})
