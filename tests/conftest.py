"""What every test needs, said by its markers (registered in pyproject.toml), and checked here.

Each test carries at least one kind: `unit` (in-process, seconds), `process` (starts service processes or
other subprocesses), `model` (loads the embedded SmolLM2, or serves a model, tiny or real, through shard
processes), `netns` (network namespaces), `native` (needs the native libraries `make` builds). Collection
fails naming any test without one, so `make test-fast` (`-m unit`) never drops a test silently. A unit test
that starts a process fails at that call: the kind is checked while the test runs, not only trusted.
"""

import os
import platform
import subprocess
from collections.abc import Generator, Iterator

import pytest

pytest_plugins = ("tests.fixtures",)

KINDS = ("unit", "process", "model", "netns", "native")

# `platform.processor()` runs `uname -p` once and caches it; clients under test (openai's) ask for it.
# Asked here, before any test, so that a unit test asking again starts no process.
platform.processor()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Before `-m` deselects anything: every collected test must say its kind."""
    unmarked = [item.nodeid for item in items if not any(item.get_closest_marker(kind) for kind in KINDS)]
    if unmarked:
        listed = "\n  ".join(unmarked)
        raise pytest.UsageError(
            f"{len(unmarked)} test(s) carry none of the kind markers {', '.join(KINDS)} "
            f"(tests/conftest.py; mark the module with pytestmark or the test itself):\n  {listed}"
        )


def _refuse_process(*_arguments: object, **_keywords: object) -> None:
    raise AssertionError("a test marked unit started a process: mark it `process` (tests/conftest.py)")


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "_execute_child", _refuse_process)
        for name in ("fork", "posix_spawn", "posix_spawnp", "system"):
            patch.setattr(os, name, _refuse_process)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI=true a skip is a failure: CI's machine must run every test (TESTING.md)."""
    report = yield
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"
    del item, call
    return report
