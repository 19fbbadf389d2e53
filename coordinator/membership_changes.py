"""The coordinator replicas' membership changes, one at a time, as the cluster's `ReplicasConfigured`
event: the leader commits them through the log (coordinator/replica.py) and every replica's Raft node
adopts them once applied."""

from services.cluster.events import ReplicasConfigured


def with_learner(voters: tuple[str, ...], learners: tuple[str, ...], replica: str) -> ReplicasConfigured | None:
    """The membership with `replica` added as a learner; None when it is a member already."""
    if replica in voters or replica in learners:
        return None
    return ReplicasConfigured(voters=voters, learners=(*learners, replica))


def promoted(
    voters: tuple[str, ...], learners: tuple[str, ...], learner: str | None, voter_target: int
) -> ReplicasConfigured | None:
    """One caught-up learner becomes a voter while there are fewer voters than the target."""
    if learner is None or learner not in learners or len(voters) >= voter_target:
        return None
    return ReplicasConfigured(
        voters=(*voters, learner), learners=tuple(other for other in learners if other != learner)
    )


def without_replica(
    voters: tuple[str, ...], learners: tuple[str, ...], replica: str, leader: str
) -> ReplicasConfigured | str:
    """The membership without `replica`, or why it cannot be removed."""
    if replica == leader:
        return f"{replica} is the leader; stop it first and remove it once another replica leads"
    if replica not in voters and replica not in learners:
        return f"{replica} is not a replica of this cluster"
    return ReplicasConfigured(
        voters=tuple(other for other in voters if other != replica),
        learners=tuple(other for other in learners if other != replica),
    )
