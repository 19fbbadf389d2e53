"""What every strata gRPC server and channel has: health and reflection, message size limits, security.

Servers require the cluster token (except health and reflection) and, with TLS material, client
certificates; channels present both. `cluster_channel` / `cluster_sync_channel` are the only way
strata code opens a channel to another strata service.
"""

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.platform.auth import ClusterSecurity, cluster_security
from services.platform.auth_interceptors import (
    SyncTokenClientInterceptor,
    TokenServerInterceptor,
    token_client_interceptors,
)
from services.platform.grpc_decode import MalformedRequestInterceptor
from services.platform.status_interceptor import StatusErrorInterceptor

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
CHANNEL_OPTIONS = [
    *SERVER_OPTIONS,
    # gRPC backs off up to 120 s between attempts to reach a peer that was down; on a LAN a service back
    # from a restart must be reached within about a second (less than a Raft election timeout).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class GrpcServer:
    """A grpc.aio server listening on host:port, with health (SERVING once started) and reflection.

    `security` defaults to this process's (`services.platform.auth.cluster_security`).
    """

    def __init__(self, host: str, port: int, service_names: list[str], security: ClusterSecurity | None = None) -> None:
        security = security if security is not None else cluster_security()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if security.token:
            interceptors.append(TokenServerInterceptor(security.token))
        # After the token check; refusals (StatusError) raised by the decoder or a servicer get their status.
        interceptors.append(StatusErrorInterceptor())
        interceptors.append(MalformedRequestInterceptor())  # INVALID_ARGUMENT, not UNKNOWN
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        self._service_names = service_names
        reflection.enable_server_reflection(
            [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        address = f"{host}:{port}"
        if security.tls is not None:
            self.port = self.server.add_secure_port(address, security.tls.server_credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_seconds: float = 2.0) -> None:
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


def cluster_channel(address: str, security: ClusterSecurity | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to another strata service, carrying the cluster token (and TLS when configured)."""
    security = security if security is not None else cluster_security()
    interceptors = token_client_interceptors(security.token) if security.token else None
    if security.tls is not None:
        return grpc.aio.secure_channel(
            address, security.tls.channel_credentials(), options=CHANNEL_OPTIONS, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)


def cluster_sync_channel(address: str, security: ClusterSecurity | None = None) -> grpc.Channel:
    """A synchronous channel to a strata service (operator commands, tests), with the same security."""
    security = security if security is not None else cluster_security()
    if security.tls is not None:
        channel = grpc.secure_channel(address, security.tls.channel_credentials(), options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    if security.token:
        return grpc.intercept_channel(channel, SyncTokenClientInterceptor(security.token))
    return channel
