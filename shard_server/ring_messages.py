"""Domain messages of the shard ring, free of protobuf (converted at the edge in `wire.py`).

Inbound work for the stage worker and outbound effects it asks the service to carry out.
"""

from dataclasses import dataclass
from pathlib import Path

from services.kernel.compute_dtype import ComputeDtype
from services.kernel.ids import InstanceId, RequestId
from services.kernel.sampling import SamplingOptions
from services.models.model_config import ModelConfig
from services.platform.tensor_codec import EncodedTensor
from shard_server.model_stage import StageRange

# --- Work the stage worker runs, in arrival order. ---


@dataclass(frozen=True)
class LoadStage:
    instance_id: InstanceId
    model_dir: Path
    stage: StageRange
    prefill_step_size: int
    compute_dtype: ComputeDtype
    ring_size: int


@dataclass(frozen=True)
class StartRequest:
    """First shard only: a new request from the gateway."""

    request_id: RequestId
    prompt_tokens: tuple[int, ...]
    max_tokens: int
    stop_token_ids: frozenset[int]
    sampling: SamplingOptions
    replay_tokens: tuple[int, ...] = ()
    """Recovery: tokens generated before a failure, fed again one step each and not reported."""


@dataclass(frozen=True)
class Segment:
    """The consecutive rows of one request inside a batch."""

    request_id: RequestId
    position: int
    length: int
    sample: bool
    sampling: SamplingOptions | None
    store_prefix: str | None = None
    """Keep the request's KV cache [0, position + length) under this key after the step."""
    reuse_prefix: str | None = None
    """The request starts at `position` from the KV cache stored under this key."""
    grammar_replay_tokens: tuple[int, ...] = ()
    """First step of a recovering request with a grammar: the journal's tokens, for the last shard's matcher."""


@dataclass(frozen=True)
class BatchStep:
    """Hidden states of every row of a batch from the previous shard, to run through this stage."""

    segments: tuple[Segment, ...]
    hidden: EncodedTensor
    compute_seconds: float = 0.0
    """Time the shards it passed so far spent computing this batch."""


@dataclass(frozen=True)
class SampledToken:
    request_id: RequestId
    token_id: int
    position: int


@dataclass(frozen=True)
class SampledTokens:
    """First shard only: the tokens the last shard sampled for one batch."""

    tokens: tuple[SampledToken, ...]
    compute_seconds: float = 0.0
    """Time every shard spent computing the batch they came from: the ring's time minus this is transport."""


@dataclass(frozen=True)
class ReleaseRequest:
    """Free the request's KV cache; the first shard passes it down the ring."""

    request_id: RequestId


@dataclass(frozen=True)
class CancelRequest:
    """First shard only: the client went away."""

    request_id: RequestId


@dataclass(frozen=True)
class FailRequest:
    request_id: RequestId
    message: str


@dataclass(frozen=True)
class ForgetPrefix:
    """The first shard evicted a stored prompt prefix; every shard drops it."""

    key: str


@dataclass(frozen=True)
class LinkBroken:
    """The stream to the next shard broke: every request held here fails."""

    message: str


WorkItem = (
    LinkBroken
    | LoadStage
    | StartRequest
    | BatchStep
    | SampledTokens
    | ReleaseRequest
    | CancelRequest
    | FailRequest
    | ForgetPrefix
)

# --- What the worker asks the service to do. ---

RingMessage = BatchStep | SampledTokens | ReleaseRequest | FailRequest | ForgetPrefix


@dataclass(frozen=True)
class SendToNext:
    message: RingMessage


@dataclass(frozen=True)
class TokenGenerated:
    request_id: RequestId
    token_id: int
    index: int


@dataclass(frozen=True)
class RequestFinished:
    request_id: RequestId
    reason: str
    prompt_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class RequestFailed:
    request_id: RequestId
    message: str


ClientEvent = TokenGenerated | RequestFinished | RequestFailed


@dataclass(frozen=True)
class StageLoadSucceeded:
    instance_id: InstanceId
    weight_bytes: int
    config: ModelConfig
    """The model's config as the stage parsed it: the service's figures (vocab, hidden, KV) come from it."""


@dataclass(frozen=True)
class StageLoadFailed:
    instance_id: InstanceId
    message: str


LocalEffect = TokenGenerated | RequestFinished | RequestFailed | StageLoadSucceeded | StageLoadFailed
"""Effects for this shard's own service (its clients, its pending loads)."""
Effect = SendToNext | LocalEffect
