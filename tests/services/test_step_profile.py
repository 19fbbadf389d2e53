"""`make bench`'s step profile: py-spy's raw stacks summarised as thread busy shares and top functions."""

import pytest

from services.app.benchmark.step_profile import (
    ProfileFormatError,
    profile_lines,
    summarise,
)

pytestmark = pytest.mark.unit

# Captured from `py-spy record --format raw --threads` on a shard (trimmed): a named stage worker
# thread, the event loop's main thread, and one thread py-spy knows only by its id.
_WORKER = "thread (0x7f01): stage-worker;_bootstrap (threading.py:1002);_run (shard_server/stage_worker.py:131)"
_BATCH = f"{_WORKER};_run_one_batch (shard_server/stage_worker.py:303);_compute (shard_server/stage_worker.py:388)"
CAPTURED = "\n".join(
    [
        f"{_BATCH};run_layers (shard_server/model_stage.py:201) 60",
        f"{_BATCH};run_layers (shard_server/model_stage.py:207) 20",
        f"{_WORKER};_run_one_batch (shard_server/stage_worker.py:296);plan (shard_server/first_shard.py:170) 10",
        "thread (0x7f02): MainThread;<module> (cli.py:5);_run_once (asyncio/base_events.py:1922) 8",
        "",
        "thread (0x7f03);worker (grpc/_server.py:12) 2",
    ]
)


def test_the_stage_workers_functions_share_out_its_samples_counting_each_function_across_its_lines() -> None:
    profile = summarise(CAPTURED, seconds=1.0, rate=100)

    assert profile.samples == 100
    assert profile.thread == "stage-worker"
    assert [(thread.thread, thread.sampled_share) for thread in profile.threads] == [
        ("stage-worker", 0.9),
        ("MainThread", 0.08),
        ("thread 0x7f03", 0.02),
    ]
    top = profile.functions[0]
    assert top.function == "run_layers (shard_server/model_stage.py)"
    assert (top.self_share, top.total_share) == (pytest.approx(80 / 90), pytest.approx(80 / 90))
    assert profile.functions[1].function == "plan (shard_server/first_shard.py)"
    assert all("asyncio" not in function.function for function in profile.functions)


def test_without_a_stage_worker_every_threads_samples_are_shared_out() -> None:
    profile = summarise(CAPTURED, seconds=1.0, rate=100, thread="no-such-thread")

    assert profile.thread == "every thread"
    assert profile.functions[0].self_share == 0.8
    assert any(function.function.startswith("_run_once (") for function in profile.functions)


def test_a_recursive_function_counts_once_per_sample_in_its_total() -> None:
    profile = summarise(
        "thread (0x1): worker;walk (tree.py:3);walk (tree.py:4);leaf (tree.py:9) 4\n", 1.0, 100, thread="worker"
    )

    assert [(function.function, function.self_share) for function in profile.functions] == [("leaf (tree.py)", 1.0)]
    recursive = summarise("thread (0x1): worker;walk (tree.py:3);walk (tree.py:4) 4\n", 1.0, 100)
    assert (recursive.functions[0].function, recursive.functions[0].total_share) == ("walk (tree.py)", 1.0)


def test_top_keeps_the_functions_with_the_most_self_samples() -> None:
    profile = summarise(CAPTURED, seconds=1.0, rate=100, top=2)

    assert [function.function.split(" ")[0] for function in profile.functions] == ["run_layers", "plan"]


def test_a_line_that_is_not_a_stack_and_count_is_a_clear_error() -> None:
    with pytest.raises(ProfileFormatError, match="line 2"):
        summarise("a;b 3\nnot a profile line\n", seconds=1.0, rate=100)


def test_the_report_section_lists_the_functions_or_says_why_there_is_none() -> None:
    lines = profile_lines(summarise(CAPTURED, 1.0, 100), shards=1, concurrency=16)

    assert lines[0] == "## Where a shard's step time goes (1 shard, 16 streams)"
    assert "| `run_layers (shard_server/model_stage.py)` | 88.9% | 88.9% |" in lines
    assert "The functions of stage-worker" in "\n".join(lines)
    skipped = profile_lines("py-spy is not installed", shards=1, concurrency=16)
    assert "Not profiled: py-spy is not installed." in skipped
