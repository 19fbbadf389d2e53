"""Where a shard's step time goes under load: py-spy samples of the shard process, summarised.

`make bench` records the 1-shard cluster's shard for a few seconds while the load client keeps 16
streams running, idle samples included (`--idle`: a thread waiting for MLX's compute thread, or for
work, looks idle to py-spy, and that wait is step time too), then reports the functions of the stage
worker (the thread that owns the model) that take the most of its samples, by self (the frame on
top) and total (anywhere on the stack) share: shares of its wall time. Where py-spy is missing or
cannot attach, the report says so instead.
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
STAGE_WORKER_THREAD = "stage-worker"
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
    sampled_share: float
    """Its samples over `seconds * rate` (1.0 for a thread sampled all along, idle samples included)."""


@dataclass(frozen=True)
class StepProfile:
    seconds: float
    rate: int
    samples: int
    threads: tuple[ThreadShare, ...]
    thread: str
    """The thread whose samples `functions` share out: the stage worker, else every thread."""
    functions: tuple[FunctionShare, ...]
    """Most self samples first, shares of `thread`'s samples."""


class ProfileFormatError(ValueError):
    """A line of py-spy's raw output that is not `frame;frame;... count`."""


def _function(frame: str) -> str:
    return _LINE_NUMBER.sub(")", frame.strip())


def _thread(frame: str) -> str:
    match = _THREAD_FRAME.match(frame.strip())
    if match is None:
        return "?"
    return match.group(2) or f"thread {match.group(1)}"


def summarise(
    raw: str, seconds: float, rate: int, top: int = TOP_FUNCTIONS, thread: str = STAGE_WORKER_THREAD
) -> StepProfile:
    """Pure: py-spy's `--format raw --threads` output (collapsed stacks, one `stack count` a line);
    the functions of `thread`, or of every thread where it has no samples."""
    stacks: list[tuple[str, list[str], int]] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            raise ProfileFormatError(f"line {number} is not 'stack count': {line[:80]!r}")
        frames = stack.split(";")
        named = frames[0].startswith("thread (")
        stacks.append((_thread(frames[0]) if named else "?", frames[1:] if named else frames, int(count_text)))
    thread_counts: Counter[str] = Counter()
    for name, _, count in stacks:
        thread_counts[name] += count
    focus = thread if thread_counts[thread] else "every thread"
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    for name, functions, count in stacks:
        if focus not in ("every thread", name):
            continue
        if functions:
            self_counts[_function(functions[-1])] += count
        for function in {_function(frame) for frame in functions}:
            total_counts[function] += count
    focused = thread_counts[focus] if focus != "every thread" else sum(thread_counts.values())
    possible = max(1.0, seconds * rate)
    threads = tuple(ThreadShare(name, count / possible) for name, count in thread_counts.most_common())
    shares = tuple(
        FunctionShare(function, count / focused, total_counts[function] / focused)
        for function, count in self_counts.most_common(top)
    )
    return StepProfile(seconds, rate, sum(thread_counts.values()), threads, focus, shares)


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
        "--idle",
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
    lines += [
        f"py-spy on the shard server for {profile.seconds:g} s at {profile.rate} samples/s under the load "
        f"client, idle samples included ({profile.samples} samples of {len(profile.threads)} threads). The "
        f"functions of {profile.thread} (the stage worker owns the model: its shares are of its wall time), "
        "from Python stacks: time in MLX's native code (`evaluate`: waiting for MLX's compute thread) counts "
        "in the Python function that called it; `wait (threading.py)` on top is the worker waiting for work.",
        "",
        "| function | self share | total share |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| `{function.function}` | {function.self_share:.1%} | {function.total_share:.1%} |"
        for function in profile.functions
    ]
    return [*lines, ""]
