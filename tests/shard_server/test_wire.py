"""Protobuf edge of the shard ring: every domain message survives the wire, malformed ones are refused."""

import numpy as np
import pytest

from services.kernel.ids import RequestId
from services.kernel.sampling import SamplingOptions
from services.platform.tensor_codec import EncodedTensor
from services.wire.generate_call import sampling_from_pb, sampling_to_pb
from shard_server.ring_messages import (
    BatchStep,
    FailRequest,
    ReleaseRequest,
    RequestFailed,
    RequestFinished,
    RingMessage,
    SampledToken,
    SampledTokens,
    Segment,
    TokenGenerated,
)
from shard_server.wire import (
    WireError,
    client_event_to_pb,
    ring_message_from_pb,
    ring_message_to_pb,
)
from strata_wire import shard_pb2

pytestmark = pytest.mark.unit

REQUEST = RequestId("request-1")
HIDDEN = EncodedTensor(dtype="bfloat16", shape=(1, 3, 4), data=bytes(range(24)))
# Values a float32 holds exactly, so the round trip can be checked with ==.
SAMPLING = SamplingOptions(temperature=0.75, top_p=0.5, top_k=40, seed=2**63 + 5, key_position=17)


def through_the_wire(message: RingMessage) -> RingMessage:
    """Domain -> protobuf -> bytes -> protobuf -> domain, as between two shards."""
    encoded = ring_message_to_pb(message).SerializeToString()
    return ring_message_from_pb(shard_pb2.RingMessage.FromString(encoded))


OTHER = RequestId("request-2")


def segment(
    request_id: RequestId, position: int, length: int, sample: bool, sampling: SamplingOptions | None
) -> Segment:
    return Segment(request_id, position, length, sample, sampling)


@pytest.mark.parametrize(
    "message",
    [
        BatchStep((segment(REQUEST, 0, 3, False, SAMPLING),), HIDDEN),
        BatchStep((segment(REQUEST, 129, 1, True, None), segment(OTHER, 0, 2, True, SAMPLING)), HIDDEN),
        BatchStep((segment(REQUEST, 5, 1, True, None),), EncodedTensor("float32", (1, 0, 8), b"")),
        SampledTokens((SampledToken(REQUEST, token_id=49151, position=130),)),
        SampledTokens((SampledToken(REQUEST, 0, 0), SampledToken(OTHER, 7, 12))),
        BatchStep((segment(REQUEST, 5, 1, True, None),), HIDDEN, compute_seconds=0.25),
        SampledTokens((SampledToken(REQUEST, 0, 0),), compute_seconds=0.5),
        ReleaseRequest(REQUEST),
        FailRequest(REQUEST, message="shard-b: out of memory"),
    ],
    ids=lambda message: type(message).__name__,
)
def test_every_ring_message_kind_round_trips(message: RingMessage) -> None:
    assert through_the_wire(message) == message


@pytest.mark.parametrize(
    ("message", "body"),
    [
        (BatchStep((segment(REQUEST, 0, 3, False, None),), HIDDEN), "batch"),
        (SampledTokens((SampledToken(REQUEST, 1, 2),)), "tokens"),
        (ReleaseRequest(REQUEST), "release"),
        (FailRequest(REQUEST, "x"), "failure"),
    ],
)
def test_each_kind_uses_its_own_oneof_body(message: RingMessage, body: str) -> None:
    assert ring_message_to_pb(message).WhichOneof("body") == body


def test_sampling_is_absent_on_the_wire_when_none() -> None:
    # Later steps of a request carry no sampling: the last shard keeps the first step's options.
    encoded = ring_message_to_pb(BatchStep((segment(REQUEST, 3, 1, True, None),), HIDDEN))

    assert not encoded.batch.segments[0].HasField("sampling")


def test_default_sampling_options_are_present_not_dropped() -> None:
    # All-default options still mark the step as carrying sampling, so greedy is not mistaken for "none".
    step = BatchStep((segment(REQUEST, 0, 3, True, SamplingOptions()),), HIDDEN)

    assert through_the_wire(step) == step


def test_a_message_without_a_body_is_refused() -> None:
    with pytest.raises(WireError, match="without a body"):
        ring_message_from_pb(shard_pb2.RingMessage(request_id="request-1"))


@pytest.mark.parametrize(
    "message",
    [
        shard_pb2.RingMessage(release=shard_pb2.ReleaseRequest()),
        shard_pb2.RingMessage(tokens=shard_pb2.SampledTokens(tokens=[shard_pb2.SampledToken(token_id=1)])),
        shard_pb2.RingMessage(batch=shard_pb2.BatchStep(segments=[shard_pb2.StepSegment(length=1)])),
        shard_pb2.RingMessage(),
    ],
)
def test_a_message_without_a_request_id_is_refused(message: shard_pb2.RingMessage) -> None:
    with pytest.raises(WireError, match="without a request_id"):
        ring_message_from_pb(message)


@pytest.mark.parametrize(("position", "length"), [(-1, 1), (0, 0), (3, -2)])
def test_a_segment_with_a_bad_position_or_length_is_refused(position: int, length: int) -> None:
    bad = shard_pb2.StepSegment(request_id="request-1", position=position, length=length)
    message = shard_pb2.RingMessage(batch=shard_pb2.BatchStep(segments=[bad]))

    with pytest.raises(WireError, match="has position"):
        ring_message_from_pb(message)


def test_a_batch_without_segments_is_refused() -> None:
    with pytest.raises(WireError, match="without segments"):
        ring_message_from_pb(shard_pb2.RingMessage(batch=shard_pb2.BatchStep()))


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(),
        SAMPLING,
        SamplingOptions(temperature=1.0, top_p=1.0, top_k=0, seed=0, key_position=0),
        SamplingOptions(temperature=0.0, seed=2**64 - 1, key_position=2**40),
    ],
)
def test_sampling_params_round_trip(options: SamplingOptions) -> None:
    encoded = sampling_to_pb(options).SerializeToString()

    decoded = sampling_from_pb(type(sampling_to_pb(options)).FromString(encoded))

    assert decoded == options


@pytest.mark.parametrize("top_p", [0.9, 0.95, 0.1, 0.33])
def test_top_p_keeps_its_float32_value(top_p: float) -> None:
    # mlx multiplies top_p into a float32 array, so only its float32 value matters.
    decoded = sampling_from_pb(sampling_to_pb(SamplingOptions(temperature=1.0, top_p=top_p)))

    assert np.float32(decoded.top_p) == np.float32(top_p)


@pytest.mark.parametrize("temperature", [0.85, 0.13, 1.05])
def test_temperature_scales_logits_as_mlx_lm_after_the_wire(temperature: float) -> None:
    # mlx-lm's categorical_sampling multiplies float32 logits by 1.0 / temp computed in double.
    decoded = sampling_from_pb(sampling_to_pb(SamplingOptions(temperature=temperature)))

    assert np.float32(1.0 / decoded.temperature) == np.float32(1.0 / temperature)


def test_client_events_map_to_their_reply_bodies() -> None:
    token = client_event_to_pb(TokenGenerated(REQUEST, token_id=42, index=3))
    finished = client_event_to_pb(RequestFinished(REQUEST, reason="stop", prompt_tokens=7, generated_tokens=3))

    assert token.WhichOneof("body") == "token"
    assert (token.token.token_id, token.token.index) == (42, 3)
    assert finished.WhichOneof("body") == "finished"
    assert (finished.finished.reason, finished.finished.prompt_tokens, finished.finished.generated_tokens) == (
        "stop",
        7,
        3,
    )


def test_a_failed_request_is_not_sent_as_a_reply() -> None:
    # Failures travel as gRPC statuses (one interceptor), never inside the stream.
    with pytest.raises(WireError, match="gRPC statuses"):
        client_event_to_pb(RequestFailed(REQUEST, message="boom"))


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), -1.0])
def test_a_peer_s_compute_time_that_is_not_a_duration_counts_as_zero(seconds: float) -> None:
    # Only statistics use it: a bad value must not poison the per-hop figures, nor fail the batch.
    wire = ring_message_to_pb(SampledTokens((SampledToken(REQUEST, 0, 0),), compute_seconds=seconds))

    decoded = ring_message_from_pb(wire)

    assert isinstance(decoded, SampledTokens)
    assert decoded.compute_seconds == 0.0
