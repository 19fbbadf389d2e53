"""The `strata service install|uninstall|status` command: its flags, and this host's facts (the venv's
`strata`, the user, the LAN address, the models in the store) turned into `ServiceOptions` for
services/app/service_units.py, which renders, writes and starts."""

import argparse
import getpass
import os
import pwd
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from services.app.service_units import (
    ROLES,
    EnvironmentSettings,
    ServiceManager,
    ServiceOptions,
    install,
    ordered_roles,
    plan_install,
    run_command,
    status,
    uninstall,
)
from services.kernel.settings import SHARD_PORT, models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_store import ModelStore


def running_manager() -> ServiceManager | None:
    """The service manager install may drive: systemd only where it is PID 1, launchd on macOS."""
    if sys.platform == "darwin":
        return "launchd"
    if Path("/run/systemd/system").is_dir():
        return "systemd"
    return None


def host_manager() -> ServiceManager:
    return "launchd" if sys.platform == "darwin" else "systemd"


def strata_executable() -> Path:
    """The `strata` beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "strata"
    if beside.exists():
        return beside.absolute()
    found = shutil.which("strata")
    if found is None:
        raise SystemExit("strata service: no `strata` executable beside the interpreter or on PATH")
    return Path(found).absolute()


def lan_address() -> str:
    """The address of the interface with the default route (a UDP connect sends nothing), else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, never sent to
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def current_user() -> str:
    return getpass.getuser()


def _ports(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: ports are comma-separated numbers") from error


def add_service_arguments(service: argparse.ArgumentParser) -> None:
    actions = service.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    for action, help_text in (
        ("install", "write this host's units and environment files, and start them where systemd or launchd runs"),
        ("uninstall", "stop and disable the units, and remove what install wrote"),
        ("status", "each unit's file and, where systemd runs, whether it is active"),
    ):
        parser = actions.add_parser(action, help=help_text)
        parser.add_argument("--home", help="state folder (default: $STRATA_HOME or ~/.strata)")
        parser.add_argument(
            "--role",
            action="append",
            choices=ROLES,
            default=[],
            help="a role to run here (repeatable; default: all three, as `strata run`; other hosts: --role shard)",
        )
        parser.add_argument("--user", action="store_true", help="the user's own units (systemd --user, LaunchAgents)")
        parser.add_argument(
            "--shard-ports", type=_ports, default=(SHARD_PORT,), help=f"shard servers' ports (default: {SHARD_PORT})"
        )
        parser.add_argument("--dry-run", action="store_true", help="print what it would write and run; change nothing")
        if action == "install":
            parser.add_argument(
                "--host", help="address coordinator and shards listen on (default: the default route's interface)"
            )
            parser.add_argument(
                "--model", action="append", default=[], help="model the coordinator serves (default: the store's)"
            )


def service_account(environment: Mapping[str, str], effective_uid: int, *, user_scope: bool) -> str | None:
    """Who system units installed with sudo run as: the user who ran sudo (never root by accident);
    None where that does not apply (this user, then)."""
    sudo_user = environment.get("SUDO_USER", "")
    if not user_scope and effective_uid == 0 and sudo_user not in ("", "root"):
        return sudo_user
    return None


def service_command(arguments: argparse.Namespace, home: Path) -> int:
    roles_given: list[str] = list(arguments.role)
    roles = ordered_roles(roles_given) if roles_given else ROLES
    account = service_account(os.environ, os.geteuid(), user_scope=bool(arguments.user))
    if account is not None and arguments.home is None and not os.environ.get("STRATA_HOME"):
        home = Path(pwd.getpwnam(account).pw_dir) / ".strata"  # theirs, not root's
    options = ServiceOptions(
        strata_bin=strata_executable(),
        home=home,
        user=account or current_user(),
        scope="user" if arguments.user else "system",
        manager=host_manager(),
        roles=roles,
        shard_ports=tuple(arguments.shard_ports),
    )
    settings = EnvironmentSettings()
    if arguments.service_command == "install":
        given_models: list[str] = list(arguments.model)
        stored = [str(model) for model in ModelStore(models_root(home)).list_models()] if not given_models else []
        settings = EnvironmentSettings(
            host=arguments.host or lan_address(), models=tuple(given_models or stored or [EMBEDDED_MODEL_ID])
        )
    plan = plan_install(options, settings, Path.home(), user_id=os.getuid())
    manager = running_manager()
    try:
        if arguments.service_command == "install":
            return install(plan, options, dry_run=arguments.dry_run, runner=run_command, manager=manager)
        if arguments.service_command == "uninstall":
            return uninstall(plan, options, dry_run=arguments.dry_run, runner=run_command, manager=manager)
    except PermissionError as error:
        print(f"strata service: {error}; system units need root (sudo), or use --user", file=sys.stderr)
        return 1
    return status(plan, options, runner=run_command, manager=manager)
