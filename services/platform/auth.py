"""The cluster token and mutual TLS: who may call a strata service's RPCs.

Every internal RPC carries `authorization: Bearer <cluster token>`; servers refuse calls without it
(UNAUTHENTICATED), except the standard health and reflection services, which stay open so load balancers
and `grpcurl` can look. The token comes from `$STRATA_CLUSTER_TOKEN`, else `$STRATA_HOME/cluster.token`;
the first service started on a host without either creates the file (mode 0600) and logs only its path.
With certificate, key and CA files, servers also require client certificates from that CA (mutual TLS).

A process sets its security once (`configure_cluster_security`) before it opens channels or servers;
processes that never do (tests, tools) use the token their environment or home resolves to, without TLS.
"""

import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.kernel.settings import strata_home

logger = logging.getLogger(__name__)

TOKEN_ENVIRONMENT_VARIABLE = "STRATA_CLUSTER_TOKEN"
TOKEN_FILE_NAME = "cluster.token"
AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "Bearer "
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Standard services anyone may call: health checks and schema listing reveal no cluster data."""


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE_NAME


def read_cluster_token(home: Path) -> str | None:
    """`$STRATA_CLUSTER_TOKEN`, else the home's token file, else None."""
    from_environment = os.environ.get(TOKEN_ENVIRONMENT_VARIABLE, "").strip()
    if from_environment:
        return from_environment
    path = token_path(home)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    if path.stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; run `chmod 600 %s`", path, path)
    return token or None


def _write_private(home: Path, token: str) -> Path:
    """A new file in `home` holding the token, created with mode 0600 (never wider, not even briefly)."""
    home.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=".cluster-token-", dir=home)  # mkstemp creates it 0600
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    return Path(name)


def ensure_cluster_token(home: Path) -> str:
    """The token this service uses; creates `$STRATA_HOME/cluster.token` on the first host."""
    existing = read_cluster_token(home)
    if existing is not None:
        return existing
    created = _write_private(home, secrets.token_urlsafe(32))
    try:
        os.link(created, token_path(home))  # fails when another service created it first: use that one
        logger.info("created the cluster token in %s; give it to other hosts with `strata join`", token_path(home))
    except FileExistsError:
        pass
    finally:
        created.unlink()
    token = read_cluster_token(home)
    if token is None:
        raise RuntimeError(f"{token_path(home)} is empty")
    return token


def write_cluster_token(home: Path, token: str) -> Path:
    """`strata join`: this home uses `token` from now on (replacing any earlier one)."""
    token = token.strip()
    if not token or any(character.isspace() for character in token):
        raise ValueError("a cluster token is one word without spaces")
    path = token_path(home)
    _write_private(home, token).replace(path)
    return path


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of this process's certificate and key and of the CA that signs every cluster member."""

    certificate: bytes
    private_key: bytes
    authority: bytes

    @classmethod
    def from_files(cls, certificate: Path, private_key: Path, authority: Path) -> "TlsMaterial":
        return cls(certificate.read_bytes(), private_key.read_bytes(), authority.read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate)], root_certificates=self.authority, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.authority, self.private_key, self.certificate)


@dataclass(frozen=True)
class ClusterSecurity:
    token: str | None
    """None: calls carry no token (a server without one accepts any call)."""
    tls: TlsMaterial | None = None

    def __repr__(self) -> str:  # never print the token, not even in a traceback
        return f"ClusterSecurity(token={'set' if self.token else None}, tls={self.tls is not None})"


class _ProcessSecurity:
    configured: ClusterSecurity | None = None


def configure_cluster_security(security: ClusterSecurity) -> None:
    _ProcessSecurity.configured = security


def cluster_security() -> ClusterSecurity:
    """What this process's servers require and its channels present."""
    if _ProcessSecurity.configured is not None:
        return _ProcessSecurity.configured
    return ClusterSecurity(read_cluster_token(strata_home()))


def bearer_matches(metadata: Sequence[tuple[str, str | bytes]] | None, token: str) -> bool:
    """Whether call metadata carries `authorization: Bearer <token>` (compared in constant time)."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION_KEY and isinstance(value, str) and value.startswith(BEARER_PREFIX):
            presented = value.removeprefix(BEARER_PREFIX).strip()
            if hmac.compare_digest(presented.encode(), token.encode()):
                return True
    return False


def authorization_metadata(token: str) -> tuple[str, str]:
    return (AUTHORIZATION_KEY, BEARER_PREFIX + token)
