"""`strata status` against a coordinator that does not answer: a clear error (exit 1), and `--watch`
saying so and retrying until Ctrl-C (exit 0); bad `--watch` values are usage errors."""

import socket

import pytest

from services.app import cli, status_command

pytestmark = pytest.mark.unit


def unused_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("output", [[], ["--json"]])
def test_an_unreachable_coordinator_is_exit_1_with_the_reason(
    output: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    address = unused_address()

    assert cli.main(["status", "--coordinator", address, *output]) == 1
    assert f"strata status: coordinator {address} unreachable: UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_watch_says_the_coordinator_is_unreachable_retries_and_ctrl_c_is_exit_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the user presses Ctrl-C during the second wait
        waits.append(seconds)
        if len(waits) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_command.time, "sleep", sleep)
    address = unused_address()

    assert cli.main(["status", "--coordinator", address, "--watch", "0.5"]) == 0
    assert waits == [0.5, 0.5]
    assert f"coordinator {address} unreachable" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "0.1", "-1", "4000", "soon"])
def test_a_bad_watch_interval_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["status", "--watch", value])

    assert stopped.value.code == 2
    assert "--watch" in capsys.readouterr().err


def test_json_and_watch_exclude_each_other() -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["status", "--json", "--watch"])

    assert stopped.value.code == 2
