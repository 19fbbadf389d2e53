"""Mutual TLS with real processes: a coordinator and a shard serve with certificates from one CA and
still require the token; a client with another CA's certificate, or none, is refused at the handshake."""

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from services.platform.auth import ClusterSecurity
from services.platform.security_options import TlsFiles
from tests.certificates import CertificateAuthority
from tests.processes import SESSION_CLUSTER_TOKEN, ServiceProcess, cluster_state, free_port, start_strata

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

READY_SECONDS = 60.0


@dataclass(frozen=True)
class TlsCluster:
    coordinator: str
    shard: str
    client: TlsFiles
    stranger: TlsFiles


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    root = tmp_path_factory.mktemp("mtls")
    authority = CertificateAuthority.create(root / "ca", "cluster")
    other = CertificateAuthority.create(root / "other-ca", "stranger")
    client = authority.issue(root / "ca", "client")
    coordinator_port, shard_port = free_port(), free_port()
    coordinator, shard = f"127.0.0.1:{coordinator_port}", f"127.0.0.1:{shard_port}"
    services: list[ServiceProcess] = []
    try:
        coordinator_tls = authority.issue(root / "ca", "coordinator").arguments()
        services.append(
            start_strata(
                "coordinator",
                ["coordinator", "--port", str(coordinator_port), "--no-mdns", *coordinator_tls],
                root / "coordinator-home",
                root / "logs",
            )
        )
        shard_tls = authority.issue(root / "ca", "shard").arguments()
        shard_arguments = ["shard", "--port", str(shard_port), "--coordinator", coordinator, "--no-mdns"]
        services.append(start_strata("shard", [*shard_arguments, *shard_tls], root / "shard-home", root / "logs"))
        security = ClusterSecurity(SESSION_CLUSTER_TOKEN, client.load())
        deadline = time.monotonic() + READY_SECONDS
        while True:
            for service in services:
                assert service.process.poll() is None, service.log_tail()
            try:
                if any(
                    info.address == shard for info in cluster_state(coordinator, security, timeout_seconds=2).shards
                ):
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, services[0].log_tail() + services[1].log_tail()
            time.sleep(0.2)
        yield TlsCluster(coordinator, shard, client, other.issue(root / "other-ca", "client"))
    finally:
        for service in reversed(services):
            service.stop()


def test_members_talk_over_mutual_tls_with_the_token(tls_cluster: TlsCluster) -> None:
    state = cluster_state(
        tls_cluster.coordinator, ClusterSecurity(SESSION_CLUSTER_TOKEN, tls_cluster.client.load()), timeout_seconds=5
    )
    assert [shard.address for shard in state.shards] == [tls_cluster.shard]  # registered over TLS


def test_the_token_is_still_required_under_tls(tls_cluster: TlsCluster) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        cluster_state(tls_cluster.coordinator, ClusterSecurity(None, tls_cluster.client.load()), timeout_seconds=5)
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("client", ["stranger", "plaintext"])
def test_a_client_without_a_cluster_certificate_is_refused(tls_cluster: TlsCluster, client: str) -> None:
    """The handshake fails before any RPC: the client sees UNAVAILABLE, not UNAUTHENTICATED, and nothing
    is served even with the right token."""
    tls = tls_cluster.stranger.load() if client == "stranger" else None
    with pytest.raises(grpc.RpcError) as refused:
        cluster_state(tls_cluster.coordinator, ClusterSecurity(SESSION_CLUSTER_TOKEN, tls), timeout_seconds=3)
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
