"""Raft-lite decision rules, pure: votes, commit index, leader lease. The node runtime only asks.

Nothing here reads a clock or does I/O; times are passed in as seconds of one monotonic clock.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


def majority(voter_count: int) -> int:
    return voter_count // 2 + 1


def log_is_at_least_as_up_to_date(
    candidate_last_term: int, candidate_last_index: int, own_last_term: int, own_last_index: int
) -> bool:
    """Raft's comparison: the later last term wins; with equal terms the longer log wins."""
    if candidate_last_term != own_last_term:
        return candidate_last_term > own_last_term
    return candidate_last_index >= own_last_index


@dataclass(frozen=True)
class VoteRequest:
    term: int
    candidate_id: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    """Only asks whether the vote would be granted; the voter's term and vote stay as they are."""


@dataclass(frozen=True)
class VoterView:
    current_term: int
    voted_for: str | None
    last_log_index: int
    last_log_term: int
    hears_live_leader: bool
    """Whether a leader's message arrived within the minimum election timeout."""


@dataclass(frozen=True)
class VoteDecision:
    granted: bool
    term: int
    """The voter's term after the request (adopted when the request's is higher)."""
    voted_for: str | None


def decide_vote(voter: VoterView, request: VoteRequest) -> VoteDecision:
    if request.pre_vote:
        would = _decide_real_vote(voter, request)
        return VoteDecision(granted=would.granted, term=voter.current_term, voted_for=voter.voted_for)
    return _decide_real_vote(voter, request)


def _decide_real_vote(voter: VoterView, request: VoteRequest) -> VoteDecision:
    unchanged = VoteDecision(granted=False, term=voter.current_term, voted_for=voter.voted_for)
    if voter.hears_live_leader:
        # The lease: while the leader is live a candidate (say, one coming back from a partition) can
        # neither win a vote nor push our term up and depose a working leader.
        return unchanged
    if request.term < voter.current_term:
        return unchanged
    voted_for = voter.voted_for if request.term == voter.current_term else None
    free = voted_for is None or voted_for == request.candidate_id
    up_to_date = log_is_at_least_as_up_to_date(
        request.last_log_term, request.last_log_index, voter.last_log_term, voter.last_log_index
    )
    if free and up_to_date:
        return VoteDecision(granted=True, term=request.term, voted_for=request.candidate_id)
    return VoteDecision(granted=False, term=request.term, voted_for=voted_for)


def won_election(granted_by: set[str], voters: Sequence[str]) -> bool:
    return len(granted_by & set(voters)) >= majority(len(voters))


def next_commit_index(
    commit_index: int,
    match_index: Mapping[str, int],
    voters: Sequence[str],
    current_term: int,
    term_at: Callable[[int], int],
) -> int:
    """The highest index a majority has fsynced, if that entry is of the leader's own term.

    Entries of earlier terms commit only underneath one of the current term (Raft's figure-8 rule).
    """
    matched = sorted((match_index.get(voter, 0) for voter in voters), reverse=True)
    candidate = matched[majority(len(voters)) - 1]
    if candidate > commit_index and term_at(candidate) == current_term:
        return candidate
    return commit_index


def lease_expiry(acked_send_times: Mapping[str, float], voters: Sequence[str], lease_seconds: float) -> float:
    """When the leader's lease ends: a majority acknowledged messages sent at or after some time T
    (the leader counts itself in `acked_send_times`); the lease lasts `lease_seconds` from T."""
    times = sorted((acked_send_times.get(voter, float("-inf")) for voter in voters), reverse=True)
    return times[majority(len(voters)) - 1] + lease_seconds
