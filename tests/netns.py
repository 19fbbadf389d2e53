"""The simulated-hosts lab (services/app/netns_lab.py) for tests, and the rule for when it is unavailable.

`require_namespaces()` probes whether a namespace can be created here; tests skip with the reason
when not, except under CI=true, where that is a failure.
"""

import os

import pytest

from services.app.netns_lab import NetnsHost, NetnsLab, namespace_problem

__all__ = ["NetnsHost", "NetnsLab", "namespace_problem", "require_namespaces"]


def require_namespaces() -> None:
    """Skips the test when namespaces are unavailable; fails instead when CI=true."""
    problem = namespace_problem()
    if problem is None:
        return
    message = f"network namespaces unavailable: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: this test must run)")
    pytest.skip(message)
