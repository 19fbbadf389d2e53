"""Raft-lite decision rules: votes, election result, commit index, leader lease (pure)."""

import pytest

from coordinator.raft.rules import (
    VoteRequest,
    VoterView,
    decide_vote,
    lease_expiry,
    log_is_at_least_as_up_to_date,
    majority,
    next_commit_index,
    won_election,
)

pytestmark = pytest.mark.unit

VOTERS = ("a", "b", "c")


def voter(
    term: int = 3, voted_for: str | None = None, last_index: int = 10, last_term: int = 3, hears_leader: bool = False
) -> VoterView:
    return VoterView(
        current_term=term,
        voted_for=voted_for,
        last_log_index=last_index,
        last_log_term=last_term,
        hears_live_leader=hears_leader,
    )


def request(
    term: int = 4, candidate: str = "b", last_index: int = 10, last_term: int = 3, pre_vote: bool = False
) -> VoteRequest:
    return VoteRequest(
        term=term, candidate_id=candidate, last_log_index=last_index, last_log_term=last_term, pre_vote=pre_vote
    )


def test_majority_of_one_three_four_and_five() -> None:
    assert [majority(count) for count in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_a_later_last_term_is_more_up_to_date_whatever_the_length() -> None:
    assert log_is_at_least_as_up_to_date(
        candidate_last_term=4, candidate_last_index=1, own_last_term=3, own_last_index=9
    )
    assert not log_is_at_least_as_up_to_date(3, 99, 4, 1)


def test_with_equal_last_terms_the_longer_log_is_more_up_to_date() -> None:
    assert log_is_at_least_as_up_to_date(3, 10, 3, 10)
    assert not log_is_at_least_as_up_to_date(3, 9, 3, 10)


def test_a_vote_goes_to_an_up_to_date_candidate_of_a_newer_term() -> None:
    decision = decide_vote(voter(), request())

    assert (decision.granted, decision.term, decision.voted_for) == (True, 4, "b")


def test_no_vote_for_a_candidate_whose_log_is_behind_but_the_term_is_adopted() -> None:
    decision = decide_vote(voter(last_index=10, last_term=3), request(last_index=9, last_term=3))

    assert (decision.granted, decision.term, decision.voted_for) == (False, 4, None)


def test_no_vote_for_a_candidate_of_an_older_term() -> None:
    decision = decide_vote(voter(term=5), request(term=4))

    assert (decision.granted, decision.term) == (False, 5)


def test_one_vote_per_term() -> None:
    decision = decide_vote(voter(term=4, voted_for="c"), request(term=4, candidate="b"))

    assert (decision.granted, decision.voted_for) == (False, "c")


def test_the_same_candidate_may_ask_again_in_the_same_term() -> None:
    assert decide_vote(voter(term=4, voted_for="b"), request(term=4, candidate="b")).granted


def test_a_new_term_frees_the_vote() -> None:
    assert decide_vote(voter(term=3, voted_for="c"), request(term=4, candidate="b")).granted


def test_while_a_leader_is_live_no_vote_and_no_term_change() -> None:
    decision = decide_vote(voter(term=3, hears_leader=True), request(term=9))

    assert (decision.granted, decision.term, decision.voted_for) == (False, 3, None)


def test_a_pre_vote_says_the_vote_would_be_granted_but_keeps_the_term_and_the_vote() -> None:
    decision = decide_vote(voter(term=3, voted_for="c"), request(term=4, candidate="b", pre_vote=True))

    assert (decision.granted, decision.term, decision.voted_for) == (True, 3, "c")


def test_a_pre_vote_is_refused_while_a_leader_is_live_or_when_the_log_is_behind() -> None:
    assert not decide_vote(voter(hears_leader=True), request(pre_vote=True)).granted
    behind = decide_vote(voter(last_index=10, last_term=3), request(last_index=9, last_term=3, pre_vote=True))
    assert (behind.granted, behind.term) == (False, 3)


def test_an_election_needs_a_majority_of_voters() -> None:
    assert won_election({"a", "b"}, VOTERS)
    assert not won_election({"a"}, VOTERS)
    assert not won_election({"a", "outsider"}, VOTERS)
    assert won_election({"a"}, ("a",))


def test_commit_follows_the_majority_match_index_of_the_current_term() -> None:
    terms = {index: 2 for index in range(1, 11)}

    commit = next_commit_index(3, {"a": 10, "b": 7, "c": 1}, VOTERS, 2, terms.__getitem__)

    assert commit == 7


def test_entries_of_an_older_term_do_not_commit_by_counting_acks() -> None:
    terms = {1: 1, 2: 1, 3: 2}

    assert next_commit_index(0, {"a": 2, "b": 2, "c": 0}, VOTERS, 2, terms.__getitem__) == 0
    assert next_commit_index(0, {"a": 3, "b": 3, "c": 0}, VOTERS, 2, terms.__getitem__) == 3


def test_commit_never_moves_back() -> None:
    terms = {index: 2 for index in range(1, 11)}

    assert next_commit_index(8, {"a": 10, "b": 5, "c": 5}, VOTERS, 2, terms.__getitem__) == 8


def test_a_lone_voter_commits_its_own_entries() -> None:
    assert next_commit_index(0, {"a": 4}, ("a",), 1, lambda _: 1) == 4


def test_the_lease_lasts_from_the_send_time_a_majority_acknowledged() -> None:
    acked = {"a": 100.0, "b": 98.0, "c": 50.0}

    assert lease_expiry(acked, VOTERS, lease_seconds=1.5) == 99.5


def test_without_a_majority_of_acknowledgements_there_is_no_lease() -> None:
    assert lease_expiry({"a": 100.0}, VOTERS, lease_seconds=1.5) == float("-inf")
