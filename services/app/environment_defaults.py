"""Flag defaults a service command takes from its environment: how a service unit's environment file
(`strata service install`, services/app/service_units.py) sets what the unit's command line leaves out.

Only `strata coordinator`, `strata shard` and `strata gateway` read these, except the logging variables,
which every command reads (services/app/logging_options.py); a flag given on the command line always wins.
The discovery variables (STRATA_CLUSTER, STRATA_INTERFACE, STRATA_NO_MDNS) are read in discovery/cli_options.py,
the TLS ones in services/platform/security_options.py, STRATA_HOME in services/kernel/settings.py.
"""

import argparse
import os

HOST_VARIABLE = "STRATA_HOST"
"""--host: the address the service listens on and announces."""
PORT_VARIABLE = "STRATA_PORT"
"""--port of the coordinator and the gateway (a shard unit's port is its instance name, on its command line)."""
COORDINATOR_VARIABLE = "STRATA_COORDINATOR"
"""--coordinator of shards and gateways (host:port; default: found by discovery)."""
MODEL_VARIABLE = "STRATA_MODEL"
"""--model of the coordinator: model ids, comma- or space-separated."""


def environment_default(variable: str, default: str) -> str:
    """The variable's value when set and not empty, else `default` (argparse converts it with the flag's type)."""
    return os.environ.get(variable) or default


def environment_list(variable: str) -> list[str]:
    """The comma- or space-separated items of the variable (none when unset)."""
    return os.environ.get(variable, "").replace(",", " ").split()


def add_service_address(service: argparse.ArgumentParser, port: int, *, port_from_environment: bool = True) -> None:
    """--host and --port of a service (defaults: $STRATA_HOST, $STRATA_PORT; see environment_defaults.py)."""
    service.add_argument(
        "--host",
        default=environment_default(HOST_VARIABLE, "127.0.0.1"),
        help=f"default: ${HOST_VARIABLE} or 127.0.0.1",
    )
    default_port = environment_default(PORT_VARIABLE, str(port)) if port_from_environment else str(port)
    source = f"${PORT_VARIABLE} or " if port_from_environment else ""
    service.add_argument("--port", type=int, default=default_port, help=f"default: {source}{port}")


def add_coordinator_address(service: argparse.ArgumentParser) -> None:
    service.add_argument(
        "--coordinator",
        default=environment_default(COORDINATOR_VARIABLE, "") or None,
        help=f"coordinator host:port (default: ${COORDINATOR_VARIABLE}, or found by discovery)",
    )


LOG_LEVEL_VARIABLE = "STRATA_LOG_LEVEL"
"""--log-level of every command (DEBUG, INFO or WARNING; -v and -q on the command line win)."""
LOG_FORMAT_VARIABLE = "STRATA_LOG_FORMAT"
"""--log-format of every command: text or json."""
LOG_FILE_VARIABLE = "STRATA_LOG_FILE"
"""--log-file of every command (ignored under journald and launchd, which keep the log themselves)."""
