"""`strata shard` options for admission: operator overrides of the limits the coordinator derives."""

import argparse

from shard_server.admission import DEFAULT_MAX_WAIT_SECONDS, DEFAULT_MAX_WAITING, AdmissionLimits


def add_admission_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-active-requests",
        type=int,
        help="requests the first shard runs at once (default: only the KV budget limits them)",
    )
    parser.add_argument(
        "--kv-budget-tokens",
        type=int,
        help="KV room for all running requests, in tokens (default: the coordinator's context x rows reservation)",
    )
    parser.add_argument(
        "--admission-queue",
        type=int,
        default=DEFAULT_MAX_WAITING,
        help="requests that may wait for room; more are refused at once (default: %(default)s)",
    )
    parser.add_argument(
        "--admission-wait",
        type=float,
        default=DEFAULT_MAX_WAIT_SECONDS,
        help="seconds a request may wait for room before it is refused (default: %(default)s)",
    )


def admission_limits(arguments: argparse.Namespace) -> AdmissionLimits:
    max_active: int | None = arguments.max_active_requests
    budget: int | None = arguments.kv_budget_tokens
    waiting: int = arguments.admission_queue
    wait_seconds: float = arguments.admission_wait
    for name, value in (("--max-active-requests", max_active), ("--kv-budget-tokens", budget)):
        if value is not None and value < 1:
            raise SystemExit(f"strata shard: {name} must be at least 1")
    if waiting < 0 or wait_seconds < 0:
        raise SystemExit("strata shard: --admission-queue and --admission-wait must not be negative")
    return AdmissionLimits(
        kv_budget_tokens=budget, max_active_requests=max_active, max_waiting=waiting, max_wait_seconds=wait_seconds
    )
