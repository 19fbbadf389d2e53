"""`make bench`'s step profile against real processes: py-spy on a busy Python thread, and a failed recording."""

import subprocess
import sys
from pathlib import Path

import pytest

from services.app.benchmark.step_profile import StepProfile, finish_recording, py_spy, start_recording

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

BUSY = """
import threading, time
def spin_in_worker():
    end = time.monotonic() + 20
    while time.monotonic() < end:
        sum(range(1000))
threading.Thread(target=spin_in_worker, name="stage-worker").start()
"""


@pytest.mark.skipif(py_spy() is None, reason="py-spy is not installed (the dev extra)")
def test_a_recording_of_a_busy_thread_names_its_function(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        recording = start_recording(busy.pid, tmp_path / "profile.txt", seconds=2)
        assert not isinstance(recording, str)
        profile = finish_recording(recording, tmp_path / "profile.txt", seconds=2)
    finally:
        busy.kill()
        busy.wait(timeout=10)

    assert isinstance(profile, StepProfile), profile
    assert profile.thread == "stage-worker"
    assert profile.threads[0].sampled_share > 0.3
    assert any(function.function.startswith("spin_in_worker (") for function in profile.functions)


def test_a_failed_recording_says_so_instead_of_a_profile(tmp_path: Path) -> None:
    failing = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('Permission denied'); sys.exit(1)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    outcome = finish_recording(failing, tmp_path / "missing.txt")

    assert outcome == "py-spy failed (status 1: Permission denied)"
