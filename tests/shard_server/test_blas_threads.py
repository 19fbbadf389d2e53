"""The BLAS thread policy: every core for a lone request, the shard's share while requests pipeline."""

import os

import pytest

from shard_server.blas_threads import BlasThreads, ThreadPolicy, policy_from_environment


@pytest.mark.unit
def test_a_lone_request_gets_every_thread_and_a_pipeline_the_share() -> None:
    policy = ThreadPolicy(alone=4, shared=2)

    assert policy.threads_for(0) == 4
    assert policy.threads_for(1) == 4
    assert policy.threads_for(2) == 2
    assert policy.threads_for(32) == 2


@pytest.mark.unit
def test_the_blas_is_called_only_when_the_count_changes() -> None:
    calls: list[int] = []
    threads = BlasThreads(ThreadPolicy(alone=2, shared=1), calls.append)

    counts = [threads.fit(active) for active in (1, 1, 3, 5, 1, 1)]

    assert calls == [2, 1, 2]
    assert counts == [2, 2, 1, 1, 2, 2]  # what the batch's native attention uses too
    assert threads.most == 2


@pytest.mark.unit
def test_without_a_controllable_blas_nothing_is_set_but_the_policy_still_counts() -> None:
    assert BlasThreads(ThreadPolicy(alone=2, shared=1), None).fit(1) == 2


@pytest.mark.unit
def test_defaults_come_from_the_environment() -> None:
    cores = len(os.sched_getaffinity(0))

    assert policy_from_environment({}) == ThreadPolicy(alone=cores, shared=cores)
    assert policy_from_environment({"OPENBLAS_NUM_THREADS": "1"}) == ThreadPolicy(alone=cores, shared=1)
    assert policy_from_environment(
        {"STRATA_BLAS_THREADS_ALONE": "3", "STRATA_BLAS_THREADS_SHARED": "2", "OPENBLAS_NUM_THREADS": "1"}
    ) == ThreadPolicy(alone=3, shared=2)
    assert policy_from_environment({"STRATA_BLAS_THREADS_SHARED": "zero"}) == ThreadPolicy(alone=cores, shared=cores)


@pytest.mark.native
def test_the_preloaded_openblas_takes_the_thread_count() -> None:
    import pytest

    from services.platform.fast_blas import blas_thread_control, fast_blas_loaded

    if not fast_blas_loaded():
        pytest.skip("this process runs MLX's reference BLAS (STRATA_BLAS=reference)")
    control = blas_thread_control()
    assert control is not None
    before = control.get()
    try:
        control.set(1)
        assert control.get() == 1
        control.set(2)
        assert control.get() == 2
    finally:
        control.set(before)


@pytest.mark.unit
def test_the_guard_waits_for_mlx_then_sets() -> None:
    from shard_server.blas_threads import between_mlx_work

    calls: list[int] = []
    between_mlx_work(calls.append)(3)

    assert calls == [3]
