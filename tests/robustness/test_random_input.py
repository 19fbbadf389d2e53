"""Bounded fuzzing of every public surface of a real cluster (deterministic: hypothesis derandomized).

Random JSON bodies, near-valid chat bodies (one field replaced by a random value) and random bytes
go to the gateway: no 5xx except 503. Random bytes go as the request message of every method of
every gRPC service (Shard, Coordinator, Raft, Peer, ModelFiles): each call ends with a status, never
UNKNOWN (an exception escaping a servicer). Afterwards every process still runs, every gRPC service
is SERVING and one ordinary completion works.
"""

import json
from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, discovery_pb2, model_transfer_pb2, raft_pb2, shard_pb2
from tests.robustness.cluster_probe import complete, grpc_serving
from tests.robustness.conftest import OverloadCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(900)]

EXAMPLES = 100
HTTP_TIMEOUT_SECONDS = 10.0
GRPC_TIMEOUT_SECONDS = 3.0
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=16,
)

VALID_CHAT: dict[str, object] = {
    "model": EMBEDDED_MODEL_ID,
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 2,
    "temperature": 0,
}
CHAT_FIELDS = (
    *("model", "messages", "max_tokens", "temperature", "top_p", "stream", "stop", "n", "seed"),
    *("stream_options", "max_completion_tokens", "frequency_penalty", "logprobs", "user", "extra"),
)


@st.composite
def near_valid_chat_bodies(draw: st.DrawFn) -> dict[str, object]:
    body = dict(VALID_CHAT)
    field = draw(st.sampled_from(CHAT_FIELDS))
    body[field] = draw(json_values)
    if draw(st.booleans()):
        body["messages"] = [
            {"role": draw(st.sampled_from(["user", "system", "assistant"])), "content": draw(json_values)}
        ]
    return body


def _assert_not_a_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text[:500])


def _post(url: str, content: bytes) -> httpx.Response | None:
    """None when the request outlives the client timeout (a long valid generation): the client leaves."""
    try:
        return httpx.post(
            url, content=content, headers={"content-type": "application/json"}, timeout=HTTP_TIMEOUT_SECONDS
        )
    except httpx.TimeoutException:
        return None


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/models"])
def test_random_json_and_bytes_never_get_a_server_error(overload_cluster: OverloadCluster, path: str) -> None:
    url = f"{overload_cluster.gateway_url}{path}"

    @FUZZ_SETTINGS
    @given(st.one_of(json_values.map(lambda value: json.dumps(value).encode()), st.binary(max_size=200)))
    def send(content: bytes) -> None:
        response = _post(url, content)
        if response is not None:
            _assert_not_a_server_error(response)

    send()
    models = httpx.get(f"{overload_cluster.gateway_url}/v1/models?{path}", timeout=HTTP_TIMEOUT_SECONDS)
    assert models.status_code == 200


def test_near_valid_chat_bodies_never_get_a_server_error(overload_cluster: OverloadCluster) -> None:
    url = f"{overload_cluster.gateway_url}/v1/chat/completions"

    @FUZZ_SETTINGS
    @given(near_valid_chat_bodies())
    def send(body: dict[str, object]) -> None:
        response = _post(url, json.dumps(body).encode())
        if response is not None:
            _assert_not_a_server_error(response)

    send()


def _methods() -> Iterator[tuple[str, MethodDescriptor]]:
    """(role, method): role names the process that serves the service."""
    for module, role in (
        (shard_pb2, "shard"),
        (coordinator_pb2, "coordinator"),
        (raft_pb2, "coordinator"),
        (discovery_pb2, "shard"),
        (model_transfer_pb2, "shard"),
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield role, method


METHODS = list(_methods())


def _drain(replies: Iterator[bytes]) -> None:
    for _ in replies:
        pass


def _call_raw(address: str, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    """Sends `payload` as the request message (no serializer); returns the status the call ended with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    with cluster_sync_channel(address) as channel:
        try:
            if method.client_streaming and method.server_streaming:
                both: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(path)
                _drain(both(iter([payload]), timeout=GRPC_TIMEOUT_SECONDS))
            elif method.server_streaming:
                replies: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(path)
                _drain(replies(payload, timeout=GRPC_TIMEOUT_SECONDS))
            else:
                channel.unary_unary(path)(payload, timeout=GRPC_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            code = error.code()
            assert code != grpc.StatusCode.UNKNOWN, f"{path}: {error.details()}"
            return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("role", "method"), METHODS, ids=[f"{m.containing_service.name}.{m.name}" for _, m in METHODS])
def test_random_bytes_to_every_grpc_method_get_a_status(
    overload_cluster: OverloadCluster, role: str, method: MethodDescriptor
) -> None:
    addresses = overload_cluster.shard_addresses if role == "shard" else (overload_cluster.coordinator_address,)

    @FUZZ_SETTINGS
    @given(st.binary(max_size=300), st.sampled_from(addresses))
    def send(payload: bytes, address: str) -> None:
        _call_raw(address, method, payload)

    send()
    assert overload_cluster.exited() is None
    for address in (*overload_cluster.shard_addresses, overload_cluster.coordinator_address):
        assert grpc_serving(address)


def test_after_the_fuzzing_every_service_serves_and_a_completion_works(overload_cluster: OverloadCluster) -> None:
    assert overload_cluster.exited() is None
    for address in (*overload_cluster.shard_addresses, overload_cluster.coordinator_address):
        assert grpc_serving(address)
    assert httpx.get(f"{overload_cluster.gateway_url}/health", timeout=10).status_code == 200
    assert complete(overload_cluster.gateway_url)
    _ = coordinator_pb2  # the coordinator's services were fuzzed above
