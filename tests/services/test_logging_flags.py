"""The logging flags of every `strata` command (services/app/logging_options.py): where they may stand,
what they give, the environment's defaults, and what a child of `strata run` inherits."""

from pathlib import Path

import pytest

from services.app import cli
from services.app.local_cluster import LocalClusterOptions
from services.app.local_cluster import _commands as local_cluster_commands  # pyright: ignore[reportPrivateUsage]
from services.app.logging_options import (
    LoggingOptionsError,
    child_log_file,
    child_logging_arguments,
    logging_settings,
)
from services.kernel.ids import ModelId
from services.platform.logging_setup import LogSettings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_logging_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("STRATA_LOG_LEVEL", "STRATA_LOG_FORMAT", "STRATA_LOG_FILE"):
        monkeypatch.delenv(variable, raising=False)


def settings_of(*argv: str) -> LogSettings:
    return logging_settings(cli._build_parser().parse_args(list(argv)))  # pyright: ignore[reportPrivateUsage]


def test_without_flags_it_is_info_text_on_stderr() -> None:
    assert settings_of("status") == LogSettings(level="INFO", format="text", file=None)


@pytest.mark.parametrize(
    "argv",
    [
        ("-v", "status"),
        ("status", "-v"),
        ("--verbose", "gateway"),
        ("models", "-v", "list"),
        ("models", "list", "-v"),
        ("cluster", "remove-replica", "x:1", "-v"),
        ("service", "status", "-v"),
    ],
)
def test_v_means_debug_before_or_after_any_command(argv: tuple[str, ...]) -> None:
    assert settings_of(*argv).level == "DEBUG"


@pytest.mark.parametrize(
    "argv", [("-q", "run"), ("run", "--quiet"), ("shard", "-q"), ("--log-level", "WARNING", "drain", "n")]
)
def test_q_means_warning(argv: tuple[str, ...]) -> None:
    assert settings_of(*argv).level == "WARNING"


def test_a_flag_after_the_command_wins_over_one_before_it() -> None:
    assert settings_of("-q", "status", "-v").level == "DEBUG"


def test_format_and_file(tmp_path: Path) -> None:
    settings = settings_of("coordinator", "--log-format", "json", "--log-file", str(tmp_path / "c.log"))

    assert settings == LogSettings(level="INFO", format="json", file=tmp_path / "c.log")


@pytest.mark.parametrize(
    "argv", [("status", "-v", "-q"), ("status", "--log-format", "xml"), ("status", "--log-level", "TRACE")]
)
def test_conflicting_or_unknown_values_are_usage_errors(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        settings_of(*argv)

    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "usage: strata status" in error and ("--log" in error or "not allowed with argument" in error)


def test_the_environment_gives_the_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STRATA_LOG_LEVEL", "warning")
    monkeypatch.setenv("STRATA_LOG_FORMAT", "json")
    monkeypatch.setenv("STRATA_LOG_FILE", str(tmp_path / "env.log"))

    assert settings_of("shard") == LogSettings(level="WARNING", format="json", file=tmp_path / "env.log")
    assert settings_of("shard", "-v", "--log-format", "text").level == "DEBUG"
    assert settings_of("shard", "-v", "--log-format", "text").format == "text"


@pytest.mark.parametrize(("variable", "value"), [("STRATA_LOG_LEVEL", "loud"), ("STRATA_LOG_FORMAT", "yaml")])
def test_a_bad_environment_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(LoggingOptionsError, match=variable):
        settings_of("status")


def test_a_bad_environment_value_stops_the_command_with_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STRATA_LOG_FORMAT", "yaml")

    assert cli.main(["status"]) == 2
    assert "STRATA_LOG_FORMAT" in capsys.readouterr().err


def test_each_child_gets_its_own_file_beside_the_parents(tmp_path: Path) -> None:
    assert child_log_file(tmp_path / "run.log", "shard 1") == tmp_path / "run.shard-1.log"
    assert child_log_file(tmp_path / "strata", "gateway") == tmp_path / "strata.gateway.log"
    assert child_logging_arguments(LogSettings(level="DEBUG", format="json"), "gateway") == [
        "--log-level", "DEBUG", "--log-format", "json",
    ]  # fmt: skip


def test_every_child_of_strata_run_inherits_the_logging(tmp_path: Path) -> None:
    options = LocalClusterOptions(
        home=tmp_path, host="127.0.0.1", gateway_port=1, coordinator_port=2, first_shard_port=3, shards=2,
        model_id=ModelId("m"), prefill_step_size=8, compute_dtype="auto",
        log_settings=LogSettings(level="WARNING", format="json", file=tmp_path / "run.log"),
    )  # fmt: skip

    commands = dict(local_cluster_commands(options))

    assert list(commands) == ["coordinator", "shard 1", "shard 2", "gateway"]
    for name, command in commands.items():
        child = cli._build_parser().parse_args(command[3:])  # pyright: ignore[reportPrivateUsage]
        assert logging_settings(child) == LogSettings(
            level="WARNING", format="json", file=tmp_path / f"run.{name.replace(' ', '-')}.log"
        )
