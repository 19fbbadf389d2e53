"""`strata service`: the units and plists rendered from deploy/ (pure), the environment files, the flag
defaults the services take from them, and install/uninstall with an injected runner in a scratch folder."""

import argparse
import plistlib
import re
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.app import cli
from services.app.environment_defaults import MODEL_VARIABLE, environment_list
from services.app.service_command import service_account
from services.app.service_units import (
    ROLES,
    EnvironmentSettings,
    Role,
    ServiceOptions,
    install,
    plan_install,
    render_environment_file,
    uninstall,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

STRATA_BIN = Path(sys.executable).parent / "strata"


def _options(tmp_path: Path, *, scope: str = "system", manager: str = "systemd") -> ServiceOptions:
    return ServiceOptions.model_validate(
        {
            "strata_bin": STRATA_BIN,
            "home": tmp_path / "home",
            "user": "alice",
            "scope": scope,
            "manager": manager,
            "roles": ROLES,
            "shard_ports": (52417, 52418),
        }
    )


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("scope", ["system", "user"])
def test_every_systemd_unit_runs_its_role_with_settings_from_the_environment_file(tmp_path: Path, scope: str) -> None:
    options = _options(tmp_path, scope=scope)
    plan = plan_install(options, EnvironmentSettings(), tmp_path)
    units = {file.role: file for file in plan.files if file.path.suffix == ".service"}

    assert sorted(units) == sorted(ROLES)
    for role, unit in units.items():
        settings = _unit_settings(unit.text)
        assert re.search(r"@[A-Z_]+@", unit.text) is None
        assert settings["EnvironmentFile"] == [str(tmp_path / "home" / f"{role}.env")]
        assert settings["ExecStart"][0].startswith(f"{STRATA_BIN} {role}")
        assert settings["Restart"] == ["on-failure"]
        assert settings["ReadWritePaths"] == [str(tmp_path / "home")]
        assert settings["StandardOutput"] == ["journal"]
        assert "MemoryDenyWriteExecute" not in settings
        assert settings.get("User") == (["alice"] if scope == "system" else None)
        assert settings["WantedBy"] == ["multi-user.target" if scope == "system" else "default.target"]
        assert not any("TOKEN" in line.upper() for line in unit.text.splitlines() if not line.startswith("#"))
    assert _unit_settings(units["shard"].text)["ExecStart"] == [f"{STRATA_BIN} shard --port %i"]
    assert plan.service_names == (
        "strata-coordinator.service",
        "strata-shard@52417.service",
        "strata-shard@52418.service",
        "strata-gateway.service",
    )
    systemctl = ["systemctl", "--user"] if scope == "user" else ["systemctl"]
    assert [list(command) for command in plan.start_commands] == [
        [*systemctl, "daemon-reload"],
        [*systemctl, "enable", "--now", *plan.service_names],
    ]


@pytest.mark.parametrize("scope", ["system", "user"])
def test_every_launchd_plist_parses_names_programs_that_exist_and_stops_as_its_unit(tmp_path: Path, scope: str) -> None:
    options = _options(tmp_path, scope=scope, manager="launchd")
    systemd = plan_install(_options(tmp_path, scope=scope), EnvironmentSettings(), tmp_path)
    plan = plan_install(options, EnvironmentSettings(), tmp_path, user_id=501)
    plists = [file for file in plan.files if file.path.suffix == ".plist"]
    stop_seconds = {
        file.role: int(_unit_settings(file.text)["TimeoutStopSec"][0])
        for file in systemd.files
        if file.path.suffix == ".service"
    }

    assert [file.path.name for file in plists] == [
        "dev.strata.coordinator.plist",
        "dev.strata.shard.52417.plist",
        "dev.strata.shard.52418.plist",
        "dev.strata.gateway.plist",
    ]
    for file in plists:
        job = plistlib.loads(file.text.encode())
        arguments: list[str] = job["ProgramArguments"]
        assert job["Label"] == file.path.stem
        assert Path(arguments[0]).exists() and Path(arguments[4]) == STRATA_BIN and STRATA_BIN.exists()
        assert arguments[3] == str(tmp_path / "home" / f"{file.role}.env")
        assert job["KeepAlive"] == {"SuccessfulExit": False}
        assert job["ExitTimeOut"] == stop_seconds[file.role]
        assert Path(job["StandardOutPath"]).parent == tmp_path / "home" / "logs"
        assert ("UserName" in job) == (scope == "system")
    assert plan.start_commands[0][:3] == ("launchctl", "bootstrap", "gui/501" if scope == "user" else "system")


def test_environment_file_values_are_what_the_service_commands_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = _options(tmp_path)
    settings = EnvironmentSettings(
        host="10.0.0.5", models=("model-a", "model-b"), coordinator_port=7001, coordinator="10.0.0.5:7001", no_mdns=True
    )
    parsed: dict[Role, argparse.Namespace] = {}
    served_models: list[str] = []
    for role in ROLES:
        with monkeypatch.context() as patch:
            for line in render_environment_file(options, role, settings).splitlines():
                if not line.startswith("#"):
                    key, value = line.split("=", 1)
                    patch.setenv(key, value)
            command = ["shard", "--port", "7002"] if role == "shard" else [role]
            parsed[role] = cli._build_parser().parse_args(command)  # pyright: ignore[reportPrivateUsage]
            if role == "coordinator":
                served_models = environment_list(MODEL_VARIABLE)  # read after parsing: --model appends

    assert (parsed["coordinator"].host, parsed["coordinator"].port) == ("10.0.0.5", 7001)
    assert (parsed["shard"].host, parsed["shard"].port, parsed["shard"].coordinator) == (
        "10.0.0.5",
        7002,
        "10.0.0.5:7001",
    )
    assert (parsed["gateway"].host, parsed["gateway"].coordinator) == ("127.0.0.1", "10.0.0.5:7001")
    assert all(namespace.no_mdns for namespace in parsed.values())
    assert served_models == ["model-a", "model-b"]


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_HOST", "10.0.0.5")
    monkeypatch.setenv("STRATA_PORT", "7001")
    monkeypatch.setenv("STRATA_COORDINATOR", "10.0.0.5:7001")
    parser = cli._build_parser()  # pyright: ignore[reportPrivateUsage]

    gateway = parser.parse_args(["gateway", "--host", "127.0.0.2", "--port", "9", "--coordinator", "127.0.0.3:1"])

    assert (gateway.host, gateway.port, gateway.coordinator) == ("127.0.0.2", 9, "127.0.0.3:1")


@pytest.mark.parametrize("home", ["relative/home", "/home/with space", "/home/100%", "/home/$HOME"])
def test_paths_a_unit_or_a_shell_would_read_specially_are_refused(home: str) -> None:
    with pytest.raises(ValidationError):
        ServiceOptions(
            strata_bin=STRATA_BIN, home=Path(home), user="alice", scope="user", manager="systemd", roles=ROLES
        )


class _Recorder:
    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> tuple[int, str]:
        self.commands.append(list(command))
        return 0, ""


def test_install_keeps_settings_and_uninstall_removes_exactly_what_install_wrote(tmp_path: Path) -> None:
    options = _options(tmp_path, scope="user")
    plan = plan_install(options, EnvironmentSettings(), tmp_path)
    shard_settings = tmp_path / "home" / "shard.env"
    shard_settings.parent.mkdir(parents=True)
    shard_settings.write_text("STRATA_HOST=10.0.0.9\n")  # the user's own, from before
    runner = _Recorder()

    assert install(plan, options, dry_run=False, runner=runner, manager="systemd") == 0
    coordinator_settings = tmp_path / "home" / "coordinator.env"
    assert shard_settings.read_text() == "STRATA_HOST=10.0.0.9\n"
    assert stat.S_IMODE(coordinator_settings.stat().st_mode) == 0o600
    assert all(file.path.exists() for file in plan.files)
    assert runner.commands == [list(command) for command in plan.start_commands]

    gateway_settings = tmp_path / "home" / "gateway.env"
    gateway_settings.write_text(gateway_settings.read_text() + "STRATA_API_KEYS=key\n")  # edited after install
    assert uninstall(plan, options, dry_run=False, runner=runner, manager="systemd") == 0

    assert runner.commands[-2] == ["systemctl", "--user", "disable", "--now", *plan.service_names]
    assert runner.commands[-1] == ["systemctl", "--user", "daemon-reload"]
    left = sorted(file.path for file in plan.files if file.path.exists())
    assert left == sorted([shard_settings, gateway_settings])
    assert not (tmp_path / "home" / "service-install.json").exists()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    options = _options(tmp_path, scope="user")
    plan = plan_install(options, EnvironmentSettings(), tmp_path)
    runner = _Recorder()

    assert install(plan, options, dry_run=True, runner=runner, manager="systemd") == 0

    assert not any(file.path.exists() for file in plan.files)
    assert runner.commands == []


@pytest.mark.parametrize(
    ("environment", "uid", "user_scope", "account"),
    [
        ({"SUDO_USER": "alice"}, 0, False, "alice"),  # sudo strata service install: alice's services
        ({"SUDO_USER": "alice"}, 0, True, None),  # a user unit is this user's
        ({"SUDO_USER": "root"}, 0, False, None),
        ({}, 0, False, None),
        ({"SUDO_USER": "alice"}, 1000, False, None),
    ],
)
def test_system_units_installed_with_sudo_run_as_the_user_who_ran_it(
    environment: dict[str, str], uid: int, user_scope: bool, account: str | None
) -> None:
    assert service_account(environment, uid, user_scope=user_scope) == account
