"""Where a shard's step time goes under load: py-spy samples of the shard process, summarised.

`make bench` records the 1-shard cluster's shard for a few seconds while the load client keeps 16
streams running, then reports each thread's busy share (its samples over the samples a fully busy
thread would give: py-spy without `--idle` samples only threads that run) and the functions that
take the most samples, by self (the frame on top) and total (anywhere on the stack) share. Where
py-spy is missing or cannot attach, the report says so instead.
"""

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROFILE_SECONDS = 8
SAMPLES_PER_SECOND = 100
TOP_FUNCTIONS = 10
_LINE_NUMBER = re.compile(r":\d+\)$")
_THREAD_FRAME = re.compile(r"^thread \((\w+)\)(?::\s*(.*))?$")


@dataclass(frozen=True)
class FunctionShare:
    function: str
    """`name (file)`, the line number left out so that a function's lines count together."""
    self_share: float
    total_share: float


@dataclass(frozen=True)
class ThreadShare:
    thread: str
    busy_share: float
    """Its samples over `seconds * rate`: about the share of the time it ran."""


@dataclass(frozen=True)
class StepProfile:
    seconds: float
    rate: int
    samples: int
    threads: tuple[ThreadShare, ...]
    functions: tuple[FunctionShare, ...]
    """Most self samples first, shares of all samples."""


class ProfileFormatError(ValueError):
    """A line of py-spy's raw output that is not `frame;frame;... count`."""


def _function(frame: str) -> str:
    return _LINE_NUMBER.sub(")", frame.strip())


def _thread(frame: str) -> str:
    match = _THREAD_FRAME.match(frame.strip())
    if match is None:
        return "?"
    return match.group(2) or f"thread {match.group(1)}"


def summarise(raw: str, seconds: float, rate: int, top: int = TOP_FUNCTIONS) -> StepProfile:
    """Pure: py-spy's `--format raw --threads` output (collapsed stacks, one `stack count` a line)."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    thread_counts: Counter[str] = Counter()
    samples = 0
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            raise ProfileFormatError(f"line {number} is not 'stack count': {line[:80]!r}")
        count = int(count_text)
        frames = stack.split(";")
        thread, functions = (_thread(frames[0]), frames[1:]) if frames[0].startswith("thread (") else ("?", frames)
        samples += count
        thread_counts[thread] += count
        if functions:
            self_counts[_function(functions[-1])] += count
        for function in {_function(frame) for frame in functions}:
            total_counts[function] += count
    possible = max(1.0, seconds * rate)
    threads = tuple(ThreadShare(name, count / possible) for name, count in thread_counts.most_common())
    shares = tuple(
        FunctionShare(function, count / samples, total_counts[function] / samples)
        for function, count in self_counts.most_common(top)
    )
    return StepProfile(seconds, rate, samples, threads, shares)


def py_spy() -> Path | None:
    """py-spy beside this interpreter (the project's virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found else None


def start_recording(pid: int, output: Path, seconds: int = PROFILE_SECONDS) -> subprocess.Popen[bytes] | str:
    """Starts py-spy on `pid` for `seconds`; a string says why it cannot."""
    binary = py_spy()
    if binary is None:
        return "py-spy is not installed (it is in the dev extra: `make setup`)"
    command = [
        str(binary),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(SAMPLES_PER_SECOND),
        "--format",
        "raw",
        "--threads",
        "--nonblocking",
        "--output",
        str(output),
    ]
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as error:
        return f"py-spy could not start: {error}"


def finish_recording(
    recording: subprocess.Popen[bytes], output: Path, seconds: int = PROFILE_SECONDS
) -> StepProfile | str:
    """Waits for py-spy (bounded) and summarises what it wrote; a string says what went wrong."""
    try:
        printed, _ = recording.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        recording.kill()
        recording.communicate()
        return "py-spy did not finish in time"
    if recording.returncode != 0 or not output.exists():
        last = printed.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"py-spy failed (status {recording.returncode}: {last[0][:200]})"
    try:
        return summarise(output.read_text(), seconds, SAMPLES_PER_SECOND)
    except ProfileFormatError as error:
        return f"py-spy's output could not be read: {error}"


def profile_lines(profile: StepProfile | str, shards: int, concurrency: int) -> list[str]:
    """The report's section."""
    lines = [f"## Where a shard's step time goes ({shards} shard, {concurrency} streams)", ""]
    if isinstance(profile, str):
        return [*lines, f"Not profiled: {profile}.", ""]
    busy = ", ".join(f"{thread.thread} {thread.busy_share:.0%}" for thread in profile.threads[:6])
    lines += [
        f"py-spy on the shard server for {profile.seconds:g} s at {profile.rate} samples/s under the load "
        f"client ({profile.samples} samples; Python stacks, so time in MLX's native code counts in the Python "
        f"function that called it). Each thread's busy share (its samples over a fully busy thread's): {busy}.",
        "",
        "| function | self share | total share |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| `{function.function}` | {function.self_share:.1%} | {function.total_share:.1%} |"
        for function in profile.functions
    ]
    return [*lines, ""]
