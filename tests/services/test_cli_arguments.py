"""Bad command-line values are refused with a usage error (exit 2) that names the option."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.process


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("command", "value"), [("coordinator", "0"), ("run", "-1"), ("coordinator", "two")])
def test_instances_below_one_or_not_a_number_is_a_usage_error(command: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.app.cli", command, "--instances", value],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "--instances" in result.stderr
