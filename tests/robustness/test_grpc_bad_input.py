"""Bad RPCs against real services: every case gets a gRPC status with a clear message (never UNKNOWN,
never a crash), every service stays SERVING, and a normal request afterwards gives the same tokens
as before the bad input."""

import struct
import uuid
from collections.abc import Callable, Iterator
from typing import cast

import grpc
import pytest

from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.platform.auth import cluster_security
from services.platform.auth_interceptors import SyncTokenClientInterceptor
from services.platform.grpc_server import MAX_MESSAGE_BYTES, cluster_sync_channel
from strata_wire import common_pb2, coordinator_pb2, coordinator_pb2_grpc, shard_pb2, shard_pb2_grpc
from tests.robustness.cluster_probe import grpc_serving, wait_until_idle
from tests.robustness.conftest import OverloadCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(300)]

HIDDEN_SIZE = 576  # SmolLM2-135M
VOCAB_SIZE = 49152
NUM_LAYERS = 30
PROMPT = [1, 504, 3458, 282, 4649, 314]
NEW_TOKENS = 6

Expected = tuple[grpc.StatusCode, str]


def _generate(address: str, request: shard_pb2.GenerateRequest) -> list[int]:
    with cluster_sync_channel(address) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(request, timeout=120)
        return [reply.token.token_id for reply in replies if reply.HasField("token")]


def _request(cluster: OverloadCluster, **fields: object) -> shard_pb2.GenerateRequest:
    request = shard_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex, instance_id=cluster.instance_id, prompt_tokens=PROMPT, max_tokens=NEW_TOKENS
    )
    for name, value in fields.items():
        if name == "sampling":
            assert isinstance(value, common_pb2.SamplingParams)
            request.sampling.CopyFrom(value)
        elif name == "prompt_tokens":
            del request.prompt_tokens[:]
            request.prompt_tokens.extend(cast("list[int]", value))
        else:
            setattr(request, name, value)
    return request


@pytest.fixture(scope="module")
def reference_tokens(overload_cluster: OverloadCluster) -> list[int]:
    wait_until_idle(overload_cluster.shard_addresses)
    return _generate(overload_cluster.shard_addresses[0], _request(overload_cluster))


@pytest.fixture
def still_healthy(overload_cluster: OverloadCluster, reference_tokens: list[int]) -> Iterator[None]:
    """After the case: nothing exited, every service is SERVING, a normal request is still exact."""
    yield
    assert overload_cluster.exited() is None
    for address in (*overload_cluster.shard_addresses, overload_cluster.coordinator_address):
        assert grpc_serving(address)
    wait_until_idle(overload_cluster.shard_addresses)
    assert _generate(overload_cluster.shard_addresses[0], _request(overload_cluster)) == reference_tokens


def _status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call)
    return error.code(), error.details() or ""


def _assert_status(actual: tuple[grpc.StatusCode, str], expected: Expected) -> None:
    code, details = actual
    assert code == expected[0], details
    assert expected[1] in details


GENERATE_CASES: dict[str, tuple[dict[str, object], Expected]] = {
    "empty prompt": ({"prompt_tokens": []}, (grpc.StatusCode.INVALID_ARGUMENT, "prompt_tokens must not be empty")),
    "zero max_tokens": ({"max_tokens": 0}, (grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be at least 1")),
    "negative max_tokens": ({"max_tokens": -3}, (grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be at least 1")),
    "token beyond the vocabulary": (
        {"prompt_tokens": [1, VOCAB_SIZE]},
        (grpc.StatusCode.INVALID_ARGUMENT, f"must lie in [0, {VOCAB_SIZE})"),
    ),
    "negative token": ({"prompt_tokens": [-1]}, (grpc.StatusCode.INVALID_ARGUMENT, "must lie in")),
    "no request id": ({"request_id": ""}, (grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")),
    "unknown instance": (
        {"instance_id": "no-such-instance"},
        (grpc.StatusCode.FAILED_PRECONDITION, "not 'no-such-instance'"),
    ),
    "negative temperature": (
        {"sampling": common_pb2.SamplingParams(temperature=-1)},
        (grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ),
    "top_p above one": (
        {"sampling": common_pb2.SamplingParams(top_p=1.5)},
        (grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ),
    "more tokens than the KV budget": (
        {"max_tokens": 2_000_000},
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "tokens of KV cache"),
    ),
}


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
@pytest.mark.usefixtures("still_healthy")
def test_generate_with_bad_input(overload_cluster: OverloadCluster, case: str) -> None:
    fields, expected = GENERATE_CASES[case]
    request = _request(overload_cluster, **fields)
    _assert_status(_status_of(lambda: _generate(overload_cluster.shard_addresses[0], request)), expected)


@pytest.mark.usefixtures("still_healthy")
def test_generate_on_a_later_shard_is_refused(overload_cluster: OverloadCluster) -> None:
    request = _request(overload_cluster)
    actual = _status_of(lambda: _generate(overload_cluster.shard_addresses[1], request))
    _assert_status(actual, (grpc.StatusCode.FAILED_PRECONDITION, "first shard"))


@pytest.mark.usefixtures("still_healthy")
def test_a_duplicate_request_id_is_refused_while_the_first_runs(overload_cluster: OverloadCluster) -> None:
    first = _request(overload_cluster, request_id="duplicate-id", max_tokens=200)
    with cluster_sync_channel(overload_cluster.shard_addresses[0]) as channel:
        running = shard_pb2_grpc.ShardStub(channel).Generate(first, timeout=120)
        next(iter(running))  # it runs
        duplicate = _request(overload_cluster, request_id="duplicate-id")
        actual = _status_of(lambda: _generate(overload_cluster.shard_addresses[0], duplicate))
        running.cancel()
    _assert_status(actual, (grpc.StatusCode.ALREADY_EXISTS, "already running"))


@pytest.mark.usefixtures("still_healthy")
def test_an_oversized_message_is_refused_with_resource_exhausted(overload_cluster: OverloadCluster) -> None:
    token = cluster_security().token
    options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)]
    raw = grpc.insecure_channel(overload_cluster.shard_addresses[0], options=options)
    channel = grpc.intercept_channel(raw, SyncTokenClientInterceptor(token)) if token else raw
    with channel:
        # Raw bytes in and out: no serializers.
        call: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream("/strata.v1.Shard/Generate")
        oversized = b"\x1a" + b"\x00" * (MAX_MESSAGE_BYTES + 1024)

        def send() -> None:
            replies: Iterator[bytes] = call(oversized, timeout=60)
            for _ in replies:
                pass

        code, _ = _status_of(send)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def _hidden(rows: int, hidden_size: int = HIDDEN_SIZE, dtype: str = "float32") -> common_pb2.Tensor:
    data = struct.pack(f"<{rows * hidden_size}f", *([0.5] * (rows * hidden_size)))
    return common_pb2.Tensor(dtype=dtype, shape=[1, rows, hidden_size], data=data)


def _batch(hidden: common_pb2.Tensor, length: int = 1, position: int = 0) -> shard_pb2.RingMessage:
    segment = shard_pb2.StepSegment(request_id="bad-ring-input", position=position, length=length, sample=True)
    return shard_pb2.RingMessage(batch=shard_pb2.BatchStep(segments=[segment], hidden=hidden))


RING_CASES: dict[str, tuple[shard_pb2.RingMessage, str]] = {
    "no body": (shard_pb2.RingMessage(request_id="x"), "without a body"),
    "batch without segments": (
        shard_pb2.RingMessage(batch=shard_pb2.BatchStep(hidden=_hidden(1))),
        "batch without segments",
    ),
    "segment of length zero": (_batch(_hidden(1), length=0), "length 0"),
    "unknown dtype": (_batch(common_pb2.Tensor(dtype="int8", shape=[1, 1, HIDDEN_SIZE])), "dtype 'int8'"),
    "integer dtype": (_batch(common_pb2.Tensor(dtype="int32", shape=[1, 1, HIDDEN_SIZE])), "dtype 'int32'"),
    "wrong hidden size": (_batch(_hidden(1, HIDDEN_SIZE + 1)), f"expected (1, 1, {HIDDEN_SIZE})"),
    "rows that do not match the segments": (_batch(_hidden(1), length=2), f"expected (1, 2, {HIDDEN_SIZE})"),
    "too few bytes": (
        _batch(common_pb2.Tensor(dtype="float32", shape=[1, 1, HIDDEN_SIZE], data=b"\x00" * 8)),
        "8 bytes of hidden states",
    ),
    "sampled token without a request id": (
        shard_pb2.RingMessage(tokens=shard_pb2.SampledTokens(tokens=[shard_pb2.SampledToken(token_id=1)])),
        "without a request_id",
    ),
}


def _ring(address: str, messages: list[shard_pb2.RingMessage]) -> list[shard_pb2.RingReply]:
    with cluster_sync_channel(address) as channel:
        return list(shard_pb2_grpc.ShardStub(channel).Ring(iter(messages), timeout=30))


@pytest.mark.parametrize("case", sorted(RING_CASES))
@pytest.mark.usefixtures("still_healthy")
def test_ring_message_with_bad_input_is_refused_on_its_stream(overload_cluster: OverloadCluster, case: str) -> None:
    message, expected = RING_CASES[case]
    replies = _ring(overload_cluster.shard_addresses[1], [message])
    assert len(replies) == 1
    assert expected in replies[0].error


@pytest.mark.usefixtures("still_healthy")
def test_ring_step_of_an_unknown_request_or_position_fails_only_that_request(
    overload_cluster: OverloadCluster,
) -> None:
    # Well formed, but the receiving shard holds no such request at position 7: the worker fails it
    # round the ring (the first shard drops the failure of a request it does not know).
    assert _ring(overload_cluster.shard_addresses[1], [_batch(_hidden(1), position=7)]) == []
    # Tokens for a request the first shard does not know are dropped.
    tokens = shard_pb2.SampledTokens(tokens=[shard_pb2.SampledToken(request_id="unknown", token_id=1, position=9)])
    assert _ring(overload_cluster.shard_addresses[0], [shard_pb2.RingMessage(tokens=tokens)]) == []


def _assign(address: str, request: shard_pb2.AssignRequest) -> None:
    with cluster_sync_channel(address) as channel:
        shard_pb2_grpc.ShardStub(channel).Assign(request, timeout=120)


FUTURE_TERM = 2**62
"""Newer than any real term, so the term check passes; a refused Assign never records it."""


def _assign_request(cluster: OverloadCluster, **fields: object) -> shard_pb2.AssignRequest:
    request = shard_pb2.AssignRequest(
        term=FUTURE_TERM,
        instance_id=cluster.instance_id,
        model_id=EMBEDDED_MODEL_ID,
        start_layer=0,
        end_layer=NUM_LAYERS // 2,
        num_layers=NUM_LAYERS,
        next_address=cluster.shard_addresses[1],
        prefill_step_size=512,
        compute_dtype="float32",
        ring_size=2,
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


ASSIGN_CASES: dict[str, tuple[dict[str, object], Expected]] = {
    "stale term": ({"term": 0}, (grpc.StatusCode.FAILED_PRECONDITION, "is older than term")),
    "empty layer range": ({"start_layer": 5, "end_layer": 5}, (grpc.StatusCode.INVALID_ARGUMENT, "layers [5, 5)")),
    "reversed layer range": ({"start_layer": 9, "end_layer": 3}, (grpc.StatusCode.INVALID_ARGUMENT, "layers [9, 3)")),
    "layers beyond the model": ({"end_layer": NUM_LAYERS + 1}, (grpc.StatusCode.INVALID_ARGUMENT, "inside the model")),
    "negative start layer": ({"start_layer": -1}, (grpc.StatusCode.INVALID_ARGUMENT, "inside the model")),
    "no instance id": ({"instance_id": ""}, (grpc.StatusCode.INVALID_ARGUMENT, "instance_id and model_id")),
    "unknown model": ({"model_id": "no-such-model"}, (grpc.StatusCode.FAILED_PRECONDITION, "no-such-model")),
    "prefill step of zero": ({"prefill_step_size": 0}, (grpc.StatusCode.INVALID_ARGUMENT, "prefill_step_size")),
    "unknown compute dtype": ({"compute_dtype": "float8"}, (grpc.StatusCode.INVALID_ARGUMENT, "float8")),
    "ring without next address": ({"next_address": ""}, (grpc.StatusCode.INVALID_ARGUMENT, "next_address")),
    "negative kv budget": ({"kv_budget_bytes_per_layer": -1}, (grpc.StatusCode.INVALID_ARGUMENT, "kv_budget")),
    "negative sequence cap": ({"kv_max_sequences": -1}, (grpc.StatusCode.INVALID_ARGUMENT, "kv_max_sequences")),
}


@pytest.mark.parametrize("case", sorted(ASSIGN_CASES))
@pytest.mark.usefixtures("still_healthy")
def test_assign_with_bad_input_changes_nothing(overload_cluster: OverloadCluster, case: str) -> None:
    fields, expected = ASSIGN_CASES[case]
    request = _assign_request(overload_cluster, **fields)
    _assert_status(_status_of(lambda: _assign(overload_cluster.shard_addresses[0], request)), expected)


COORDINATOR_CASES: dict[str, tuple[str, object, Expected]] = {
    "shard without ids": (
        "RegisterShard",
        coordinator_pb2.RegisterShardRequest(available_memory_bytes=1),
        (grpc.StatusCode.INVALID_ARGUMENT, "are required"),
    ),
    "shard with negative memory": (
        "RegisterShard",
        coordinator_pb2.RegisterShardRequest(
            shard_id="s", node_id="n", address="127.0.0.1:1", available_memory_bytes=-5, device="cpu"
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "available_memory_bytes"),
    ),
    "shard with unknown device": (
        "RegisterShard",
        coordinator_pb2.RegisterShardRequest(
            shard_id="s", node_id="n", address="127.0.0.1:1", available_memory_bytes=1, device="abacus"
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "device"),
    ),
    "shard with a negative speed": (
        "RegisterShard",
        coordinator_pb2.RegisterShardRequest(
            shard_id="s", node_id="n", address="127.0.0.1:1", available_memory_bytes=1, device="cpu", work_per_second=-1
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "work_per_second"),
    ),
    "preview of an unknown model": (
        "PreviewPlacement",
        coordinator_pb2.PreviewPlacementRequest(model_id="no-such-model"),
        (grpc.StatusCode.NOT_FOUND, "no-such-model"),
    ),
    "serve without a model id": (
        "ServeModel",
        coordinator_pb2.ServeModelRequest(),
        (grpc.StatusCode.INVALID_ARGUMENT, "model_id"),
    ),
    "serve with too many instances": (
        "ServeModel",
        coordinator_pb2.ServeModelRequest(model_id="m", instances=100_000),
        (grpc.StatusCode.INVALID_ARGUMENT, "instances"),
    ),
    "serve of a model the store lacks": (
        "ServeModel",
        coordinator_pb2.ServeModelRequest(model_id="no-such-model"),
        (grpc.StatusCode.NOT_FOUND, "no-such-model"),
    ),
    "unserve of a model not served": (
        "UnserveModel",
        coordinator_pb2.UnserveModelRequest(model_id="no-such-model"),
        (grpc.StatusCode.NOT_FOUND, "is not served"),
    ),
    "preview serving with negative instances": (
        "PreviewServing",
        coordinator_pb2.PreviewServingRequest(model_id="m", instances=-1),
        (grpc.StatusCode.INVALID_ARGUMENT, "instances"),
    ),
    "pull without a repository": (
        "PullModel",
        coordinator_pb2.PullModelRequest(),
        (grpc.StatusCode.INVALID_ARGUMENT, "repository is required"),
    ),
    "pull of a malformed repository": (
        "PullModel",
        coordinator_pb2.PullModelRequest(repository="../etc"),
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid repository"),
    ),
    "pull with HF_HUB_OFFLINE": (
        "PullModel",
        coordinator_pb2.PullModelRequest(repository="Org/Name"),
        (grpc.StatusCode.FAILED_PRECONDITION, "HF_HUB_OFFLINE"),
    ),
    "join without a replica id": (
        "JoinCluster",
        coordinator_pb2.JoinClusterRequest(),
        (grpc.StatusCode.INVALID_ARGUMENT, "replica_id"),
    ),
}


@pytest.mark.parametrize("case", sorted(COORDINATOR_CASES))
@pytest.mark.usefixtures("still_healthy")
def test_coordinator_rpc_with_bad_input(overload_cluster: OverloadCluster, case: str) -> None:
    method, request, expected = COORDINATOR_CASES[case]
    with cluster_sync_channel(overload_cluster.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        call: Callable[..., object] = getattr(stub, method)
        _assert_status(_status_of(lambda: call(request, timeout=30)), expected)
