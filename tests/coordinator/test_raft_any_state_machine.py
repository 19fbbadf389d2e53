"""The Raft node replicates any state machine, not only the cluster's: here a list of notes, on one
voter (a majority of one), through propose, commit, apply, snapshot and a restart from storage."""

import asyncio
import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pytest

from coordinator.raft.interface import RaftPeer
from coordinator.raft.node import RaftNode
from coordinator.raft.state_machine import RecordCodec
from coordinator.raft.storage import LOG_FILE, SNAPSHOT_FILE, RaftStorage

pytestmark = pytest.mark.unit

ME = "solo:1"


@dataclass(frozen=True)
class Written:
    index: int
    text: str


@dataclass(frozen=True)
class TermBegan:
    index: int
    term: int
    leader: str


@dataclass(frozen=True)
class Members:
    index: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]


Record = Written | TermBegan | Members


@dataclass(frozen=True)
class Notes:
    last_index: int = 0
    lines: tuple[str, ...] = ()
    term: int = 0
    leader: str = ""
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()


class NotesMachine:
    """A StateMachine[Notes, Record] with nothing of the cluster in it; its JSON is the json module's."""

    def initial_state(self) -> Notes:
        return Notes()

    def apply(self, state: Notes, record: Record) -> Notes:
        assert record.index == state.last_index + 1
        match record:
            case Written():
                return Notes(record.index, (*state.lines, record.text), state.term, state.leader, state.voters)
            case TermBegan():
                return Notes(record.index, state.lines, record.term, record.leader, state.voters, state.learners)
            case Members():
                return Notes(record.index, state.lines, state.term, state.leader, record.voters, record.learners)

    def term_started(self, index: int, term: int, leader: str) -> Record:
        return TermBegan(index, term, leader)

    def configured(self, index: int, voters: tuple[str, ...], learners: tuple[str, ...]) -> Record:
        return Members(index, voters, learners)

    def encode_record(self, record: Record) -> bytes:
        return json.dumps({"kind": type(record).__name__, **asdict(record)}).encode()

    def decode_record(self, data: bytes) -> Record:
        fields = json.loads(data)
        match fields.pop("kind"):
            case "Written":
                return Written(fields["index"], fields["text"])
            case "TermBegan":
                return TermBegan(fields["index"], fields["term"], fields["leader"])
            case "Members":
                return Members(fields["index"], tuple(fields["voters"]), tuple(fields["learners"]))
            case kind:
                raise ValueError(f"not a record: {kind!r}")

    def encode_state(self, state: Notes) -> bytes:
        return json.dumps(asdict(state)).encode()

    def decode_state(self, data: bytes) -> Notes:
        fields = json.loads(data)
        return Notes(
            fields["last_index"],
            tuple(fields["lines"]),
            fields["term"],
            fields["leader"],
            tuple(fields["voters"]),
            tuple(fields["learners"]),
        )


NOTES = NotesMachine()


def no_peer(address: str, timeout_seconds: float, codec: RecordCodec[Notes, Record]) -> RaftPeer[Notes, Record]:
    raise AssertionError(f"a lone voter has no peer to call, yet called {address}")


def lone_voter(folder: Path) -> RaftNode[Notes, Record]:
    return RaftNode(ME, RaftStorage(folder, NOTES), NOTES, no_peer, snapshot_every=3)


async def leading(node: RaftNode[Notes, Record]) -> None:
    while not node.leads_with_lease():
        await node.wait_for_change(0.05)


async def write(node: RaftNode[Notes, Record], texts: list[str]) -> Notes:
    state = node.state
    for text in texts:
        state = await node.propose(partial(Written, text=text))
    return state


def test_a_lone_voter_replicates_its_own_state_machine_and_restarts_from_storage(tmp_path: Path) -> None:
    async def first_run() -> Notes:
        node = lone_voter(tmp_path)
        node.bootstrap((ME,))
        node.start()
        await leading(node)
        state = await write(node, ["a", "b", "c", "d", "e"])
        await node.stop()
        return state

    state = asyncio.run(asyncio.wait_for(first_run(), timeout=20))

    # Term 1's first records (the term, then the bootstrap's membership) take indices 1 and 2.
    assert state == Notes(last_index=7, lines=("a", "b", "c", "d", "e"), term=1, leader=ME, voters=(ME,))
    stored = RaftStorage(tmp_path, NOTES)
    assert (stored.snapshot.last_index, stored.entry_count, stored.last_index) == (6, 1, 7)
    assert stored.snapshot.state.lines == ("a", "b", "c", "d")
    assert json.loads((tmp_path / SNAPSHOT_FILE).read_text())["state"]["lines"] == ["a", "b", "c", "d"]
    assert json.loads((tmp_path / LOG_FILE).read_text())["record"] == {"kind": "Written", "index": 7, "text": "e"}

    async def second_run() -> tuple[Notes, Notes]:
        node = lone_voter(tmp_path)
        from_snapshot = node.state
        node.start()
        await leading(node)
        state = await write(node, ["f"])
        await node.stop()
        return from_snapshot, state

    from_snapshot, state = asyncio.run(asyncio.wait_for(second_run(), timeout=20))

    assert from_snapshot.lines == ("a", "b", "c", "d")
    # Term 2 starts at index 8 and commits the entry the snapshot left in the log; no new membership.
    assert state == Notes(last_index=9, lines=("a", "b", "c", "d", "e", "f"), term=2, leader=ME, voters=(ME,))
    assert RaftStorage(tmp_path, NOTES).hard_state.current_term == 2
