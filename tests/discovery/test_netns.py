"""The namespace harness itself: hosts reach each other over the bridge, partitions and new addresses
work, and nothing is left behind."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import NetnsLab, require_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.process, pytest.mark.timeout(120)]

_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError as error:
    print(error); sys.exit(1)
"""


def _reachable(lab: NetnsLab, source: int, address: str, port: int) -> bool:
    result = lab.run_python(lab.hosts[source], ["-c", _CONNECT, address, str(port)])
    return result.returncode == 0


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True).stdout


def test_hosts_reach_each_other_partition_and_readdress(tmp_path: Path) -> None:
    require_namespaces()
    with NetnsLab.create(tmp_path) as lab:
        first, second = lab.add_host(), lab.add_host()
        assert first.address != second.address
        assert first.home != second.home
        server = lab.spawn(first, "listener", [sys.executable, "-m", "http.server", "-b", "0.0.0.0", "18080"])
        assert lab.run(first, ["ip", "-o", "link", "show", "lo"]).stdout.count("UP") >= 1
        for _ in range(100):  # the listener starts (bounded)
            if _reachable(lab, 1, first.address, 18080):
                break
        assert _reachable(lab, 1, first.address, 18080), server.log_tail()
        lab.set_link(first, up=False)
        assert not _reachable(lab, 1, first.address, 18080)
        lab.set_link(first, up=True)
        old_address = first.address
        new_address = lab.readdress(first)
        assert new_address != old_address
        assert _reachable(lab, 1, new_address, 18080)
        assert not _reachable(lab, 1, old_address, 18080)
        names = [first.namespace, second.namespace, lab.switch]
        assert all(name in _namespaces() for name in names)
        pid = server.pid
    assert not any(name in _namespaces() for name in names)
    assert server.process.poll() is not None, f"listener {pid} still running"


def test_no_address_of_the_lab_exists_outside_it(tmp_path: Path) -> None:
    require_namespaces()
    with NetnsLab.create(tmp_path) as lab:
        lab.add_host()
        root_addresses = subprocess.run(
            ["ip", "-o", "addr"], check=False, capture_output=True, text=True, timeout=30
        ).stdout
        assert lab.subnet not in root_addresses
