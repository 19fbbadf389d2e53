"""The log formats, the request-id filter and the rotating log file (services/platform/logging_setup.py,
services/platform/request_context.py), on the real logging module."""

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.platform.logging_setup import (
    JsonLogFormatter,
    LogSettings,
    TextLogFormatter,
    configure_logging,
    under_service_manager,
)
from services.platform.request_context import (
    RequestIdFilter,
    current_request_id,
    request_id_from_metadata,
    request_id_metadata,
    request_scope,
    valid_request_id,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def restored_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test configures the root logger as a service would; the next one gets pytest's back."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("XPC_SERVICE_NAME", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def record(message: str, *arguments: object, request_id: str | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("strata.test", logging.WARNING, __file__, 1, message, arguments, None)
    if request_id is not None:
        entry.request_id = request_id
    RequestIdFilter().filter(entry)  # keeps an id already set; else the current request's, or None
    return entry


def test_a_json_line_has_time_service_level_logger_and_message() -> None:
    line = JsonLogFormatter("gateway").format(record("%d tokens for %s", 3, "Zoë"))

    document = json.loads(line)
    assert "\n" not in line
    assert document["service"] == "gateway" and document["level"] == "WARNING"
    assert document["logger"] == "strata.test" and document["message"] == "3 tokens for Zoë"
    assert document["time"].endswith("+00:00") and "T" in document["time"]
    assert "request_id" not in document and "exception" not in document


def test_a_json_line_carries_the_request_id_and_the_exception_text() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        entry = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry.request_id = "abc123"

    document = json.loads(JsonLogFormatter("shard").format(entry))

    assert document["request_id"] == "abc123"
    assert document["exception"].startswith("Traceback") and "ValueError: bad\nthing" in document["exception"]


def test_a_text_line_shows_the_request_id_before_the_message() -> None:
    formatter = TextLogFormatter("shard")

    assert formatter.format(record("hello", request_id="r-1")).endswith("WARNING strata.test: [r-1] hello")
    assert formatter.format(record("hello")).endswith("WARNING strata.test: hello")


def test_the_filter_adds_the_id_of_the_scope_and_nothing_outside_one() -> None:
    with request_scope("req-7"):
        inside = record("in")
        assert request_id_metadata() == (("x-request-id", "req-7"),)
    outside = record("out")

    assert getattr(inside, "request_id") == "req-7"  # noqa: B009
    assert getattr(outside, "request_id") is None  # noqa: B009
    assert request_id_metadata() == ()


def test_concurrent_requests_keep_their_own_ids_in_the_tasks_they_start() -> None:
    async def request(request_id: str) -> list[str | None]:
        with request_scope(request_id):
            seen = [current_request_id()]
            await asyncio.sleep(0)
            seen.append(await asyncio.create_task(asyncio.sleep(0, current_request_id())))
            seen.append(current_request_id())
            return seen

    async def both() -> list[list[str | None]]:
        return list(await asyncio.gather(request("one"), request("two")))

    assert asyncio.run(asyncio.wait_for(both(), timeout=10)) == [["one"] * 3, ["two"] * 3]


@pytest.mark.parametrize("text", ["abc", "chatcmpl-0f3a", "trace:1/2=3+4_5.6", "a" * 128])
def test_valid_request_ids(text: str) -> None:
    assert valid_request_id(text)


@pytest.mark.parametrize("text", ["", "-leading-dash", "has space", "a" * 129, "new\nline", "é"])
def test_invalid_request_ids(text: str) -> None:
    assert not valid_request_id(text)


def test_only_a_valid_id_is_taken_from_grpc_metadata() -> None:
    assert request_id_from_metadata([("authorization", "x"), ("x-request-id", "r-9")]) == "r-9"
    assert request_id_from_metadata([("x-request-id", "bad id")]) is None
    assert request_id_from_metadata([("x-request-id-bin", b"r")]) is None
    assert request_id_from_metadata(None) is None


def test_a_configured_service_writes_json_lines_with_the_request_id_to_its_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "shard.log"
    configure_logging("shard", LogSettings(level="DEBUG", format="json", file=path))

    logging.getLogger("strata.a").debug("before")
    with request_scope("req-1"):
        logging.getLogger("strata.b").info("during")

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["message"], line.get("request_id")) for line in lines] == [("before", None), ("during", "req-1")]
    assert {line["service"] for line in lines} == {"shard"}


def test_the_level_filters_lines(tmp_path: Path) -> None:
    path = tmp_path / "quiet.log"
    configure_logging("run", LogSettings(level="WARNING", file=path))

    logging.getLogger("strata").info("not shown")
    logging.getLogger("strata").warning("shown")

    assert [line.split(": ", 1)[1] for line in path.read_text().splitlines()] == ["shown"]


def test_the_log_file_rotates_by_size_and_keeps_the_given_count(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    configure_logging("gateway", LogSettings(file=path, file_max_bytes=2000, file_backups=2))

    for index in range(200):
        logging.getLogger("strata").info("line %03d %s", index, "x" * 40)

    assert sorted(file.name for file in tmp_path.iterdir()) == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    assert all(file.stat().st_size <= 2000 for file in tmp_path.iterdir())
    assert path.read_text().splitlines()[-1].endswith(f"line 199 {'x' * 40}")
    assert "line 000" not in "".join(file.read_text() for file in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("variable", "value", "manager"),
    [("JOURNAL_STREAM", "8:1234", "journald"), ("XPC_SERVICE_NAME", "dev.strata.shard", "launchd")],
)
def test_under_journald_or_launchd_the_log_file_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, manager: str
) -> None:
    monkeypatch.setenv(variable, value)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)

    configure_logging("shard", LogSettings(file=tmp_path / "shard.log"))
    logging.getLogger("strata").warning("to the journal")

    assert under_service_manager() == manager
    assert not (tmp_path / "shard.log").exists()
    assert f"{manager} keeps this service's log; --log-file is ignored" in stderr.getvalue()
    assert "to the journal" in stderr.getvalue()


def test_an_interactive_macos_shell_is_not_launchd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPC_SERVICE_NAME", "0")

    assert under_service_manager() is None
