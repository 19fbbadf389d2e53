"""How many BLAS threads a shard's next batch uses.

A shard server with one request in flight computes alone: the other shards of the ring wait for its
activations, so it may use every core of its host. With several requests in flight the shards of a
ring compute at the same time and share the host's cores, so each keeps its share (spinning BLAS
threads on oversubscribed cores cost more than they bring). Row results do not depend on the thread
count (OpenBLAS splits the output, not the sums), so this never changes a token.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

ALONE_THREADS_VARIABLE = "STRATA_BLAS_THREADS_ALONE"
"""Threads for a shard's lone request (default: the cores this process may run on)."""
SHARED_THREADS_VARIABLE = "STRATA_BLAS_THREADS_SHARED"
"""Threads while requests pipeline through the ring (default: OPENBLAS_NUM_THREADS, else every core:
one shard server per host is the usual layout; `strata run` sets it for shards sharing a host)."""


@dataclass(frozen=True)
class ThreadPolicy:
    alone: int
    shared: int

    def threads_for(self, active_requests: int) -> int:
        return self.alone if active_requests <= 1 else self.shared


def _positive(value: str | None, default: int) -> int:
    try:
        parsed = int(value) if value else default
    except ValueError:
        return default
    return parsed if parsed >= 1 else default


def policy_from_environment(environment: dict[str, str] | None = None) -> ThreadPolicy:
    values = os.environ if environment is None else environment
    cores = len(os.sched_getaffinity(0))
    shared = _positive(values.get(SHARED_THREADS_VARIABLE), _positive(values.get("OPENBLAS_NUM_THREADS"), cores))
    return ThreadPolicy(alone=_positive(values.get(ALONE_THREADS_VARIABLE), cores), shared=shared)


def between_mlx_work(set_threads: Callable[[int], None]) -> Callable[[int], None]:
    """`set_threads`, called only once MLX's CPU stream is idle: MLX runs BLAS on its own thread, and
    OpenBLAS must not change its thread count under a running product."""

    def guarded(threads: int) -> None:
        mx.synchronize()
        set_threads(threads)

    return guarded


class BlasThreads:
    """Applies the policy before each batch, calling the BLAS only when the count changes."""

    def __init__(self, policy: ThreadPolicy, set_threads: Callable[[int], None] | None) -> None:
        self._policy = policy
        self._set_threads = set_threads
        self._current: int | None = None

    @property
    def most(self) -> int:
        """The most threads any batch gets."""
        return max(self._policy.alone, self._policy.shared)

    def fit(self, active_requests: int) -> int:
        """Sets the BLAS's count for the next batch; returns it (the policy's, where nothing is set)."""
        wanted = self._policy.threads_for(active_requests)
        if self._set_threads is not None and wanted != self._current:
            self._set_threads(wanted)
            self._current = wanted
        return wanted
