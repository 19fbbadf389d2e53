"""What a shard holds between steps: per-request state, the loaded stage's queues, counters."""

import math
from collections import deque
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from services.kernel.ids import InstanceId, RequestId
from services.kernel.sampling import SamplingOptions
from shard_server.batch_plan import DecodeRow
from shard_server.grammar_mask import GrammarVocabulary
from shard_server.model_stage import ModelStage
from shard_server.prefix_cache import PrefixDirectory, PrefixStore
from shard_server.ring_messages import BatchStep, Segment
from shard_server.sampler import RequestSampler


@dataclass
class Driver:
    """First shard only: what the request asked for and how far it got."""

    prompt_tokens: tuple[int, ...]
    max_tokens: int
    stop_token_ids: frozenset[int]
    chunks: list[tuple[int, int]]
    next_chunk: int = 0
    generated: int = 0
    reuse_prefix: str | None = None
    """A stored prefix the request starts from; named on its first step so every shard restores it."""
    first_step_sent: bool = False
    replay_tokens: tuple[int, ...] = ()
    """Recovery: the journal's tokens, used (and not reported) for the first generated steps."""


@dataclass
class RequestState:
    cache: list[KVCache]
    sampling: SamplingOptions | None = None
    """Sent on with the request's first step so the last shard can sample."""
    sampler: RequestSampler | None = None
    driver: Driver | None = None


BATCH_ROWS_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Upper bounds of the rows-per-step histogram's buckets (`StageStats.batch_rows_buckets`; then +Inf)."""


@dataclass(frozen=True, kw_only=True)
class StageStats:
    """A snapshot of one shard's stage, as GetStats reports it; built by keyword, zero when idle."""

    instance_id: InstanceId | None = None
    start_layer: int = 0
    end_layer: int = 0
    active_requests: int = 0
    kv_cache_bytes: int = 0
    steps: int = 0
    batched_rows: int = 0
    batch_rows_buckets: tuple[int, ...] = ()
    """Steps per bucket of rows (not cumulative): one per bound of `BATCH_ROWS_BOUNDS`, then one above."""
    batch_invariant: bool = False
    native_attention: bool = False
    compute_seconds: float = 0.0
    """Time spent running batches through this stage (forward, sampling, evaluation)."""
    ring_seconds: float = 0.0
    """First shard: total time from launching a request's step to receiving its token."""
    ring_samples: int = 0
    prefix_cache_bytes: int = 0
    prefix_hits: int = 0
    """First shard: requests that started from a stored prompt prefix."""
    reused_prompt_tokens: int = 0
    replayed_tokens: int = 0
    """First shard: journal tokens fed again by recovering requests."""
    replay_divergences: int = 0
    """First shard: replayed steps whose sampled token differed from the journal's."""
    hop_overheads: tuple[float, ...] = ()
    """First shard of a ring: per-hop overhead of recent steps, in seconds."""
    hop_overhead_seconds: float = 0.0
    """First shard of a ring: every per-hop overhead sample added up (`hop_overhead_samples` of them)."""
    hop_overhead_samples: int = 0

    def hop_overhead_percentile(self, percent: float) -> float:
        """Nearest-rank percentile of the recent per-hop overheads; 0 when there are none."""
        if not self.hop_overheads:
            return 0.0
        ordered = sorted(self.hop_overheads)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(percent / 100 * len(ordered)) - 1))]


@dataclass
class LoadedStage:
    instance_id: InstanceId
    stage: ModelStage
    prefill_step_size: int
    ring_size: int
    requests: dict[RequestId, RequestState] = field(default_factory=lambda: {})
    ready: list[DecodeRow] = field(default_factory=lambda: [])
    """First shard: requests whose next token is known, waiting for a batch."""
    prefill_waiting: deque[RequestId] = field(default_factory=deque[RequestId])
    """First shard: requests with prompt chunks left, in arrival order."""
    received: deque[BatchStep] = field(default_factory=deque[BatchStep])
    """Other shards: batches from the previous shard, in arrival order."""
    prefixes: PrefixStore = field(default_factory=PrefixStore)
    directory: PrefixDirectory | None = None
    """First shard: which prefixes the ring keeps."""
    grammar_vocabulary: GrammarVocabulary | None = None
    """Last shard: the tokenizer grammar masks are computed over (built on the first grammar request)."""


@dataclass(frozen=True)
class PlannedBatch:
    """One batch about to run: its segments, in row order, and the stage's input for them."""

    segments: tuple[Segment, ...]
    states: tuple[RequestState, ...]
    inputs: mx.array
    upstream_compute_seconds: float = 0.0
    """Time the shards before this one spent computing the batch."""


def cache_arrays(states: tuple[RequestState, ...]) -> list[mx.array]:
    return [
        array for state in states for cache in state.cache for array in (cache.keys, cache.values) if array is not None
    ]
