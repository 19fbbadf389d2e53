"""The discovery flags every service command takes, and the `DiscoveryOptions` they give.

Each flag falls back on an environment variable (how a service unit's environment file sets it); a flag
on the command line wins.
"""

import argparse
import os

from discovery.peer import DEFAULT_CLUSTER, split_address
from discovery.peer_source import DiscoveryOptions

CLUSTER_ENVIRONMENT_VARIABLE = "STRATA_CLUSTER"
INTERFACE_ENVIRONMENT_VARIABLE = "STRATA_INTERFACE"
"""--interface: addresses, comma- or space-separated."""
NO_MDNS_ENVIRONMENT_VARIABLE = "STRATA_NO_MDNS"
"""--no-mdns when 1, true or yes."""


def _address(text: str) -> str:
    try:
        split_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def add_discovery_arguments(parser: argparse.ArgumentParser, *, peer_flag: bool = True) -> None:
    """Adds --cluster, --interface, --no-mdns and (unless the command defines its own) --peer."""
    group = parser.add_argument_group("discovery")
    group.add_argument(
        "--cluster",
        default=os.environ.get(CLUSTER_ENVIRONMENT_VARIABLE, DEFAULT_CLUSTER),
        help=f"cluster name; peers of other clusters are ignored (default: ${CLUSTER_ENVIRONMENT_VARIABLE} or "
        "%(default)s)",
    )
    group.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="ADDR",
        help=f"address of an interface mDNS may use (repeatable; default: ${INTERFACE_ENVIRONMENT_VARIABLE}, "
        "comma-separated, or every interface)",
    )
    group.add_argument(
        "--no-mdns",
        action="store_true",
        default=os.environ.get(NO_MDNS_ENVIRONMENT_VARIABLE, "").strip().lower() in ("1", "true", "yes"),
        help=f"no multicast: use --peer addresses only (also ${NO_MDNS_ENVIRONMENT_VARIABLE}=1)",
    )
    if peer_flag:
        group.add_argument(
            "--peer",
            action="append",
            default=[],
            type=_address,
            metavar="HOST:PORT",
            help="a peer's gRPC address, for networks without multicast (repeatable)",
        )


def discovery_options(arguments: argparse.Namespace) -> DiscoveryOptions:
    peers: list[str] = list(arguments.peer)
    interfaces: list[str] = (
        list(arguments.interface) or os.environ.get(INTERFACE_ENVIRONMENT_VARIABLE, "").replace(",", " ").split()
    )
    return DiscoveryOptions(
        cluster=str(arguments.cluster),
        interfaces=tuple(interfaces),
        static_peers=tuple(peers),
        mdns=not arguments.no_mdns,
    )
