"""The logging flags of every `strata` command, and what a child of `strata run` inherits of them.

`-v` (DEBUG), `-q` (WARNING), `--log-level`, `--log-format text|json` and `--log-file PATH` are accepted
before the command and after it, at every level (`strata -v status`, `strata models list -q`): every
parser is a `StrataArgumentParser`, which adds them with no default, so a flag given at any level
survives; what is left unset comes from $STRATA_LOG_LEVEL, $STRATA_LOG_FORMAT, $STRATA_LOG_FILE
(services/app/environment_defaults.py), else INFO, text, stderr.
"""

import argparse
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from services.app.environment_defaults import (
    LOG_FILE_VARIABLE,
    LOG_FORMAT_VARIABLE,
    LOG_LEVEL_VARIABLE,
    environment_default,
)
from services.platform.logging_setup import LogFormat, LogLevel, LogSettings

LEVELS: tuple[str, ...] = get_args(LogLevel)
FORMATS: tuple[str, ...] = get_args(LogFormat)


class StrataArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser with the logging flags; its subcommands' parsers are of this class too."""

    def __init__(self, *args: object, **keywords: object) -> None:
        super().__init__(*args, **keywords)  # pyright: ignore[reportArgumentType]
        add_logging_arguments(self)


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    verbosity = group.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", dest="log_level", action="store_const", const="DEBUG", default=argparse.SUPPRESS,
        help="log DEBUG lines too",
    )  # fmt: skip
    verbosity.add_argument(
        "-q", "--quiet", dest="log_level", action="store_const", const="WARNING", default=argparse.SUPPRESS,
        help="log warnings and errors only",
    )  # fmt: skip
    verbosity.add_argument(
        "--log-level", dest="log_level", choices=LEVELS, default=argparse.SUPPRESS,
        help=f"DEBUG, INFO or WARNING (default: ${LOG_LEVEL_VARIABLE} or INFO)",
    )  # fmt: skip
    group.add_argument(
        "--log-format", choices=FORMATS, default=argparse.SUPPRESS,
        help=f"text lines, or one JSON object a line (default: ${LOG_FORMAT_VARIABLE} or text)",
    )  # fmt: skip
    group.add_argument(
        "--log-file", type=Path, metavar="PATH", default=argparse.SUPPRESS,
        help=f"log to PATH, rotated at 10 MiB, 5 old files kept (default: ${LOG_FILE_VARIABLE}, else stderr; "
        "ignored under journald and launchd)",
    )  # fmt: skip


class LoggingOptionsError(ValueError):
    """A logging setting from the environment that is not one of the allowed values."""


def logging_settings(arguments: argparse.Namespace) -> LogSettings:
    """The settings the flags in `arguments` give, with the environment's defaults for the rest."""
    level = str(getattr(arguments, "log_level", None) or environment_default(LOG_LEVEL_VARIABLE, "INFO")).upper()
    log_format = str(getattr(arguments, "log_format", None) or environment_default(LOG_FORMAT_VARIABLE, "text"))
    file: object = getattr(arguments, "log_file", None) or environment_default(LOG_FILE_VARIABLE, "") or None
    try:
        return LogSettings.model_validate(
            {"level": level, "format": log_format, "file": None if file is None else Path(str(file))}
        )
    except ValidationError as error:
        raise LoggingOptionsError(
            f"${LOG_LEVEL_VARIABLE} must be one of {', '.join(LEVELS)} and ${LOG_FORMAT_VARIABLE} one of "
            f"{', '.join(FORMATS)} (got {level!r}, {log_format!r})"
        ) from error


def child_log_file(file: Path, child: str) -> Path:
    """A child's own log file beside its parent's: `run.log` -> `run.shard-1.log` (one writer per file,
    so each rotates alone)."""
    name = child.replace(" ", "-")
    return file.with_name(f"{file.stem}.{name}{file.suffix or '.log'}")


def child_logging_arguments(settings: LogSettings, child: str) -> list[str]:
    """The flags that give child `child` of `strata run` the parent's logging (its own file, if any)."""
    arguments = ["--log-level", settings.level, "--log-format", settings.format]
    if settings.file is not None:
        arguments += ["--log-file", str(child_log_file(settings.file, child))]
    return arguments
