"""`strata service install|uninstall|status`: this host's strata services as systemd units or launchd jobs.

The templates live in deploy/ (one systemd unit per role, `strata-shard@.service` a template whose
instance name is the shard's gRPC port; one launchd plist per role). Rendering is pure: a frozen
`ServiceOptions` (this host's strata executable, home, user, scope, roles, shard ports) and a template
give the text (`render_systemd_unit`, `render_launchd_plist`), and `plan_install` gives every file to
write and every command to run, without touching anything. The thin layer below (`install`,
`uninstall`, `status`) writes the files, runs `systemctl`/`launchctl` through an injected runner, and
records what it wrote in `$STRATA_HOME/service-install.json`, so that `uninstall` removes exactly
that: a unit or environment file changed since is kept and named.

Settings reach a service through its environment file, `$STRATA_HOME/<role>.env` (mode 0600, written
only when absent: never over the user's settings): STRATA_HOME and the variables the service commands
read as flag defaults (services/app/environment_defaults.py, discovery/cli_options.py). Unit files hold
paths only, and never the cluster token, which stays in `$STRATA_HOME/cluster.token`.
"""

import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from pydantic import BaseModel, ConfigDict, field_validator

from discovery.cli_options import NO_MDNS_ENVIRONMENT_VARIABLE
from services.app.environment_defaults import COORDINATOR_VARIABLE, HOST_VARIABLE, MODEL_VARIABLE, PORT_VARIABLE
from services.kernel.settings import COORDINATOR_PORT, GATEWAY_PORT, SHARD_PORT, logs_root

Role = Literal["coordinator", "shard", "gateway"]
ROLES: tuple[Role, ...] = ("coordinator", "shard", "gateway")
Scope = Literal["system", "user"]
"""system: /etc/systemd/system or /Library/LaunchDaemons, run as `user`; user: the user's own manager."""
ServiceManager = Literal["systemd", "launchd"]

DEPLOY_DIRECTORY = Path(__file__).resolve().parents[2] / "deploy"
MANIFEST_NAME = "service-install.json"
SYSTEMD_UNIT_NAMES: dict[Role, str] = {
    "coordinator": "strata-coordinator.service",
    "shard": "strata-shard@.service",
    "gateway": "strata-gateway.service",
}
LAUNCHD_LABEL_PREFIX = "dev.strata."
_UNSAFE_VALUE = re.compile(r"[\s\"'\\$`%]")
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def ordered_roles(roles: Sequence[str]) -> tuple[Role, ...]:
    return tuple(role for role in ROLES if role in roles)


class ServiceOptions(BaseModel):
    """What this host's units say: every path absolute and free of characters a unit or a shell would
    read specially (whitespace, quotes, backslash, $, `, %)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    strata_bin: Path
    home: Path
    user: str
    scope: Scope
    manager: ServiceManager
    roles: tuple[Role, ...]
    shard_ports: tuple[int, ...] = (SHARD_PORT,)

    def ordered_roles(self) -> tuple[Role, ...]:
        """This host's roles in start order: coordinator, shards, gateway (as `strata run`)."""
        return ordered_roles(self.roles)

    @field_validator("strata_bin", "home")
    @classmethod
    def _plain_absolute_path(cls, path: Path) -> Path:
        if not path.is_absolute() or _UNSAFE_VALUE.search(str(path)):
            raise ValueError(f"{path}: needs an absolute path without whitespace, quotes, \\, $, ` or %")
        return path

    @field_validator("user")
    @classmethod
    def _plain_user(cls, user: str) -> str:
        if not user or _UNSAFE_VALUE.search(user):
            raise ValueError(f"{user!r} is not a plain user name")
        return user

    @field_validator("shard_ports")
    @classmethod
    def _ports(cls, ports: tuple[int, ...]) -> tuple[int, ...]:
        if not ports or any(not 0 < port < 65536 for port in ports) or len(set(ports)) != len(ports):
            raise ValueError(f"shard ports must be distinct TCP ports, not {ports}")
        return ports


class EnvironmentSettings(BaseModel):
    """The settings an environment file starts with; the file then belongs to the user."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    host: str = "127.0.0.1"
    """Where coordinator and shards listen and announce; the gateway stays on 127.0.0.1 unless `gateway_host`."""
    gateway_host: str = "127.0.0.1"
    models: tuple[str, ...] = ()
    coordinator_port: int | None = None
    gateway_port: int | None = None
    coordinator: str | None = None
    no_mdns: bool = False

    @field_validator("host", "gateway_host")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not value or _UNSAFE_VALUE.search(value):
            raise ValueError(f"{value!r} is not a plain address")
        return value


class PlannedFile(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    role: Role
    path: Path
    text: str
    mode: int
    keep_existing: bool
    """True for environment files: never written over."""


class InstallPlan(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    files: tuple[PlannedFile, ...]
    service_names: tuple[str, ...]
    """systemd units (`strata-shard@52417.service`) or launchd labels, in start order."""
    start_commands: tuple[tuple[str, ...], ...]
    """What starts them where the service manager runs (systemd as PID 1, launchd)."""
    follow_lines: tuple[str, ...]
    """How to follow each service's log."""


def environment_file(home: Path, role: Role) -> Path:
    return home / f"{role}.env"


def unit_directory(manager: ServiceManager, scope: Scope, user_home: Path) -> Path:
    if manager == "systemd":
        return user_home / ".config/systemd/user" if scope == "user" else Path("/etc/systemd/system")
    return user_home / "Library/LaunchAgents" if scope == "user" else Path("/Library/LaunchDaemons")


def systemd_service_names(options: ServiceOptions) -> tuple[str, ...]:
    """Started coordinator first, gateway last, as `strata run` does."""
    names: list[str] = []
    for role in ROLES:
        if role not in options.roles:
            continue
        if role == "shard":
            names.extend(f"strata-shard@{port}.service" for port in options.shard_ports)
        else:
            names.append(SYSTEMD_UNIT_NAMES[role])
    return tuple(names)


def launchd_label(role: Role, port: int | None = None) -> str:
    return f"{LAUNCHD_LABEL_PREFIX}{role}" + (f".{port}" if port is not None else "")


def _fill(template: str, values: dict[str, str]) -> str:
    text = template
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    left = _PLACEHOLDER.findall(text)
    if left:
        raise ValueError(f"template placeholders left unfilled: {sorted(set(left))}")
    return text


def render_systemd_unit(template: str, options: ServiceOptions, role: Role) -> str:
    """The unit for `role` on this host; a user unit drops `User=` (a user manager runs as its user)."""
    lines = template.splitlines(keepends=True)
    if options.scope == "user":
        lines = [line for line in lines if not line.startswith("User=")]
    return _fill(
        "".join(lines),
        {
            "STRATA_BIN": str(options.strata_bin),
            "STRATA_HOME": str(options.home),
            "USER": options.user,
            "ENVIRONMENT_FILE": str(environment_file(options.home, role)),
            "WANTED_BY": "default.target" if options.scope == "user" else "multi-user.target",
        },
    )


def render_launchd_plist(template: str, options: ServiceOptions, role: Role, port: int | None = None) -> str:
    """The launchd job for `role` (a shard's for `port`); an agent (user scope) drops UserName."""
    text = template
    if options.scope == "user":
        text = re.sub(r"\n\s*<key>UserName</key>\s*<string>@USER@</string>", "", text)
    values = {
        "STRATA_BIN": str(options.strata_bin),
        "STRATA_HOME": str(options.home),
        "USER": options.user,
        "ENVIRONMENT_FILE": str(environment_file(options.home, role)),
    }
    if port is not None:
        values["PORT"] = str(port)
    return _fill(text, {name: escape(value) for name, value in values.items()})


def render_environment_file(options: ServiceOptions, role: Role, settings: EnvironmentSettings) -> str:
    """KEY=value lines without quotes or spaces, which systemd's EnvironmentFile= and /bin/sh (launchd's
    jobs source it) read alike; commented lines show the other settings a service reads."""
    lines = [
        f"# strata {role}'s settings, read by its service unit. `strata service install` wrote this file once",
        "# and never writes over it: edit it, then restart the service. KEY=value, no quotes, no spaces: systemd",
        "# and /bin/sh (launchd) read it alike. Flags a service takes this way: `strata " + role + " --help`.",
        "# The cluster token is not here: $STRATA_HOME/cluster.token (`strata join`).",
        f"STRATA_HOME={options.home}",
    ]
    if role == "gateway":
        lines.append(f"{HOST_VARIABLE}={settings.gateway_host}")
        lines.append("# To serve other machines: this host's LAN address above, and API keys (comma-separated):")
        lines.append("# STRATA_API_KEYS=...")
    else:
        lines.append(f"{HOST_VARIABLE}={settings.host}")
    if role == "coordinator":
        models = ",".join(settings.models)
        lines.append(f"{MODEL_VARIABLE}={models}" if models else f"# {MODEL_VARIABLE}=model-id,other-model-id")
    port = {"coordinator": settings.coordinator_port, "gateway": settings.gateway_port, "shard": None}[role]
    default_port = {"coordinator": COORDINATOR_PORT, "gateway": GATEWAY_PORT, "shard": None}[role]
    if port is not None:
        lines.append(f"{PORT_VARIABLE}={port}")
    elif default_port is not None:
        lines.append(f"# {PORT_VARIABLE}={default_port}")
    if role != "coordinator":
        if settings.coordinator is not None:
            lines.append(f"{COORDINATOR_VARIABLE}={settings.coordinator}")
        else:
            lines.append(f"# {COORDINATOR_VARIABLE}=host:{COORDINATOR_PORT}   (default: found by discovery)")
    lines.append(f"{NO_MDNS_ENVIRONMENT_VARIABLE}=1" if settings.no_mdns else f"# {NO_MDNS_ENVIRONMENT_VARIABLE}=1")
    lines.extend(
        [
            "# STRATA_CLUSTER=strata",
            "# STRATA_INTERFACE=192.168.1.10",
            "# STRATA_TLS_CERT=/path/cert.pem",
            "# STRATA_TLS_KEY=/path/key.pem",
            "# STRATA_TLS_CA=/path/ca.pem",
        ]
    )
    for line in lines:
        if not line.startswith("#") and _UNSAFE_VALUE.search(line.split("=", 1)[1]):
            raise ValueError(f"{line!r}: an environment file value needs no spaces, quotes, \\, $, ` or %")
    return "\n".join(lines) + "\n"


def read_template(name: str) -> str:
    return (DEPLOY_DIRECTORY / name).read_text()


def plan_install(
    options: ServiceOptions,
    settings: EnvironmentSettings,
    user_home: Path,
    templates: Callable[[str], str] = read_template,
    user_id: int = 0,
) -> InstallPlan:
    """Every file install writes and every command that starts the services (pure: `templates` reads)."""
    directory = unit_directory(options.manager, options.scope, user_home)
    files: list[PlannedFile] = []
    for role in ROLES:
        if role in options.roles:
            files.append(
                PlannedFile(
                    role=role,
                    path=environment_file(options.home, role),
                    text=render_environment_file(options, role, settings),
                    mode=0o600,
                    keep_existing=True,
                )
            )
    if options.manager == "systemd":
        for role in options.ordered_roles():
            name = SYSTEMD_UNIT_NAMES[role]
            text = render_systemd_unit(templates(name), options, role)
            files.append(PlannedFile(role=role, path=directory / name, text=text, mode=0o644, keep_existing=False))
        names = systemd_service_names(options)
        systemctl = ("systemctl", "--user") if options.scope == "user" else ("systemctl",)
        return InstallPlan(
            files=tuple(files),
            service_names=names,
            start_commands=((*systemctl, "daemon-reload"), (*systemctl, "enable", "--now", *names)),
            follow_lines=tuple(
                f"journalctl {'--user-unit' if options.scope == 'user' else '-u'} {name} -f" for name in names
            ),
        )
    domain = f"gui/{user_id}" if options.scope == "user" else "system"
    labels: list[str] = []
    follow: list[str] = []
    for role in options.ordered_roles():
        ports: tuple[int | None, ...] = options.shard_ports if role == "shard" else (None,)
        for port in ports:
            label = launchd_label(role, port)
            text = render_launchd_plist(templates(f"launchd/{launchd_label(role)}.plist"), options, role, port)
            files.append(
                PlannedFile(role=role, path=directory / f"{label}.plist", text=text, mode=0o644, keep_existing=False)
            )
            labels.append(label)
            log_name = f"{role}-{port}" if port is not None else role
            follow.append(f"tail -f {logs_root(options.home) / f'{log_name}.log'}")
    return InstallPlan(
        files=tuple(files),
        service_names=tuple(labels),
        start_commands=tuple(
            ("launchctl", "bootstrap", domain, str(file.path)) for file in files if file.path.suffix == ".plist"
        ),
        follow_lines=tuple(follow),
    )


def foreground_command(options: ServiceOptions, role: Role, port: int | None = None) -> str:
    """The command line that runs `role` by hand as its unit would (where no service manager runs)."""
    tail = f"shard --port {port}" if role == "shard" else role
    return f"env $(grep -v '^#' {environment_file(options.home, role)} | xargs) {options.strata_bin} {tail}"


# ---- the thin layer with effects ----

Runner = Callable[[Sequence[str]], tuple[int, str]]
"""Runs a command, returns its exit status and output (injected: tests never call systemctl)."""


def run_command(command: Sequence[str]) -> tuple[int, str]:
    try:
        completed = subprocess.run(list(command), capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 1, str(error)
    return completed.returncode, (completed.stdout + completed.stderr).strip()


def _owner(user: str) -> tuple[int, int] | None:
    """The service user's uid and gid when root installs for another user (sudo), else None."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return None
    return None if account.pw_uid == 0 else (account.pw_uid, account.pw_gid)


def _give(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, *owner)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _load_manifest(home: Path) -> dict[str, dict[str, str]]:
    path = home / MANIFEST_NAME
    if not path.exists():
        return {}
    loaded: dict[str, dict[str, str]] = json.loads(path.read_text())
    return loaded


def _save_manifest(home: Path, manifest: dict[str, dict[str, str]]) -> None:
    path = home / MANIFEST_NAME
    if not manifest:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def install(
    plan: InstallPlan, options: ServiceOptions, *, dry_run: bool, runner: Runner, manager: ServiceManager | None
) -> int:
    """Writes the plan's files (environment files only where absent), then starts the services where the
    service manager runs, else prints how to start and follow each one."""
    owner = _owner(options.user)
    if not dry_run:
        logs_root(options.home).mkdir(parents=True, exist_ok=True)  # launchd writes logs there
        for folder in (options.home, logs_root(options.home)):
            _give(folder, owner)
    manifest = {} if dry_run else _load_manifest(options.home)
    for file in plan.files:
        if file.keep_existing and file.path.exists():
            print(f"kept {file.path} (exists: your settings)")
            continue
        if dry_run:
            print(f"would write {file.path}:\n{file.text}")
            continue
        file.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = file.path.with_name(f".{file.path.name}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(file.text)
        os.chmod(temporary, file.mode)
        if file.keep_existing:  # the environment file: its user reads it (launchd's /bin/sh runs as them)
            _give(temporary, owner)
        os.replace(temporary, file.path)
        manifest[str(file.path)] = {"role": file.role, "sha256": _digest(file.text)}
        print(f"wrote {file.path}")
    if not dry_run:
        _save_manifest(options.home, manifest)
    if manager is not None and manager == options.manager and not dry_run:
        for command in plan.start_commands:
            status, output = runner(command)
            print(f"ran {' '.join(command)}" + (f": {output}" if output else ""))
            if status != 0:
                print(f"strata service: {' '.join(command)} failed (exit {status})", file=sys.stderr)
                return 1
        for line in plan.follow_lines:
            print(f"follow: {line}")
        return 0
    verb = "would start" if manager is not None else "no service manager runs here (systemd is not PID 1); start"
    print(f"{verb} them with:")
    for command in plan.start_commands:
        print(f"  {' '.join(command)}")
    print("or run each in the foreground as its unit does:")
    for role in ROLES:
        if role in options.roles:
            for port in options.shard_ports if role == "shard" else (None,):
                print(f"  {foreground_command(options, role, port)}")
    print("and follow each one with:")
    for line in plan.follow_lines:
        print(f"  {line}")
    return 0


def uninstall(
    plan: InstallPlan, options: ServiceOptions, *, dry_run: bool, runner: Runner, manager: ServiceManager | None
) -> int:
    """Stops and disables the services where possible, then removes the files install recorded for these
    roles; a file changed since install is kept and named."""
    if manager is not None and manager == options.manager and not dry_run:
        if options.manager == "systemd":
            systemctl = ("systemctl", "--user") if options.scope == "user" else ("systemctl",)
            stop_commands: list[tuple[str, ...]] = [(*systemctl, "disable", "--now", *plan.service_names)]
        else:
            domain = f"gui/{os.getuid()}" if options.scope == "user" else "system"
            stop_commands = [("launchctl", "bootout", f"{domain}/{label}") for label in plan.service_names]
        for command in stop_commands:
            status, output = runner(command)
            print(f"ran {' '.join(command)} (exit {status})" + (f": {output}" if output else ""))
    manifest = _load_manifest(options.home)
    for path_text, entry in sorted(manifest.items()):
        if entry["role"] not in options.roles:
            continue
        path = Path(path_text)
        if dry_run:
            print(f"would remove {path}")
            continue
        if path.exists() and _digest(path.read_text()) != entry["sha256"]:
            print(f"kept {path} (changed since install)")
        else:
            path.unlink(missing_ok=True)
            print(f"removed {path}")
        del manifest[path_text]
    if not dry_run:
        _save_manifest(options.home, manifest)
        if manager == "systemd" and options.manager == "systemd":
            systemctl = ("systemctl", "--user") if options.scope == "user" else ("systemctl",)
            runner((*systemctl, "daemon-reload"))
    return 0


def status(plan: InstallPlan, options: ServiceOptions, *, runner: Runner, manager: ServiceManager | None) -> int:
    """Each unit file's path (and whether it is there) and, where systemd runs, `systemctl is-active`."""
    for file in plan.files:
        print(f"{file.role}: {file.path} ({'present' if file.path.exists() else 'absent'})")
    for name in plan.service_names:
        if manager == "systemd" and options.manager == "systemd":
            systemctl = ("systemctl", "--user") if options.scope == "user" else ("systemctl",)
            _, output = runner((*systemctl, "is-active", name))
            print(f"{name}: {output or 'unknown'}")
        else:
            print(f"{name}: no service manager to ask here")
    return 0
