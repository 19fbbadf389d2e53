"""The security flags every service command takes (--tls-*), the process's security, and `strata join`."""

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from services.platform.auth import (
    ClusterSecurity,
    TlsMaterial,
    configure_cluster_security,
    ensure_cluster_token,
    read_cluster_token,
    token_path,
    write_cluster_token,
)

logger = logging.getLogger(__name__)

TLS_ENVIRONMENT_VARIABLES = {"cert": "STRATA_TLS_CERT", "key": "STRATA_TLS_KEY", "ca": "STRATA_TLS_CA"}


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    private_key: Path
    authority: Path

    def load(self) -> TlsMaterial:
        return TlsMaterial.from_files(self.certificate, self.private_key, self.authority)

    def arguments(self) -> list[str]:
        """The flags that give a child process the same files."""
        return [
            "--tls-cert",
            str(self.certificate),
            "--tls-key",
            str(self.private_key),
            "--tls-ca",
            str(self.authority),
        ]


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (mutual TLS; the cluster token is always required)")
    for name, help_text in (
        ("cert", "this host's certificate (PEM)"),
        ("key", "its private key (PEM)"),
        ("ca", "the CA certificate every cluster member's certificate is signed by (PEM)"),
    ):
        variable = TLS_ENVIRONMENT_VARIABLES[name]
        group.add_argument(
            f"--tls-{name}", type=Path, default=os.environ.get(variable) or None, help=f"{help_text}; ${variable}"
        )


def tls_files(arguments: argparse.Namespace) -> TlsFiles | None:
    given: list[Path | None] = [arguments.tls_cert, arguments.tls_key, arguments.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("strata: --tls-cert, --tls-key and --tls-ca go together")
    return TlsFiles(Path(arguments.tls_cert), Path(arguments.tls_key), Path(arguments.tls_ca))


def configure_security(arguments: argparse.Namespace, home: Path, *, serves: bool) -> TlsFiles | None:
    """Sets this process's security from the flags and the home; a serving process creates the token."""
    files = tls_files(arguments)
    token = ensure_cluster_token(home) if serves else read_cluster_token(home)
    if token is None:
        logger.warning("no cluster token (%s or $STRATA_CLUSTER_TOKEN): calls will be refused", token_path(home))
    configure_cluster_security(ClusterSecurity(token, files.load() if files is not None else None))
    return files


def add_join_arguments(join: argparse.ArgumentParser) -> None:
    join.add_argument(
        "--token-file",
        type=Path,
        help="file holding the cluster token (default: read it from standard input); never pass it as an argument",
    )


def join(arguments: argparse.Namespace, home: Path) -> int:
    """`strata join`: this home uses the cluster token of an existing cluster."""
    if arguments.token_file is not None:
        text = Path(arguments.token_file).read_text()
    else:
        if sys.stdin.isatty():
            print("paste the cluster token (from the first host's cluster.token), then Enter:", file=sys.stderr)
        text = sys.stdin.readline()
    try:
        path = write_cluster_token(home, text)
    except ValueError as error:
        print(f"strata join: {error}", file=sys.stderr)
        return 2
    print(f"strata join: saved the cluster token in {path}; restart this host's services to use it")
    return 0
