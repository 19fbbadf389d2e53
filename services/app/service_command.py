"""The `strata service install|uninstall|status` command: its flags, and this host's facts (the venv's
`strata`, the user, the LAN address, the models in the store) turned into `ServiceOptions` for
services/app/service_units.py, which renders, writes and starts."""

import argparse
import os
from pathlib import Path

from services.app.service_units import (
    ROLES,
    EnvironmentSettings,
    ServiceOptions,
    current_user,
    host_manager,
    install,
    lan_address,
    ordered_roles,
    plan_install,
    run_command,
    running_manager,
    status,
    strata_executable,
    uninstall,
)
from services.kernel.settings import SHARD_PORT, models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_store import ModelStore


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


def service_command(arguments: argparse.Namespace, home: Path) -> int:
    roles_given: list[str] = list(arguments.role)
    roles = ordered_roles(roles_given) if roles_given else ROLES
    options = ServiceOptions(
        strata_bin=strata_executable(),
        home=home,
        user=current_user(),
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
    if arguments.service_command == "install":
        return install(plan, options, dry_run=arguments.dry_run, runner=run_command, manager=manager)
    if arguments.service_command == "uninstall":
        return uninstall(plan, options, dry_run=arguments.dry_run, runner=run_command, manager=manager)
    return status(plan, options, runner=run_command, manager=manager)
