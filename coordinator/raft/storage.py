"""Durable Raft state under $STRATA_HOME/coordinator/: term and vote, the log, one snapshot.

Every write is fsynced before the call returns, so whatever a replica acknowledged survives a power
cut. Files: `hard_state.json` and `snapshot.json` are replaced atomically (write aside, fsync,
rename, fsync the folder); `log.jsonl` holds one entry per line after the snapshot and is appended
to; truncation and compaction rewrite it atomically. A torn last line (power cut mid-append) was
never acknowledged and is dropped on load.

The records and the state are the state machine's (`RecordCodec`): an entry's line is
`{"term":T,"record":RECORD}` and the snapshot `{"last_index":I,"last_term":T,"state":STATE}`, with
RECORD and STATE the codec's JSON.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic

from pydantic import BaseModel, ConfigDict, JsonValue
from pydantic_core import to_json

from coordinator.raft.state_machine import R, RecordCodec, S
from services.platform.durable_files import fsync_folder

HARD_STATE_FILE = "hard_state.json"
SNAPSHOT_FILE = "snapshot.json"
LOG_FILE = "log.jsonl"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


@dataclass(frozen=True)
class LogEntry(Generic[R]):
    term: int
    record: R

    @property
    def index(self) -> int:
        return self.record.index


class HardState(_Frozen):
    current_term: int = 0
    voted_for: str | None = None
    voters: tuple[str, ...] = ()
    """The voting members once the cluster is bootstrapped; empty before."""


@dataclass(frozen=True)
class Snapshot(Generic[S]):
    last_index: int
    last_term: int
    state: S


class _StoredEntry(_Frozen):
    """A line of the log as read, its record still JSON for the codec."""

    term: int
    record: JsonValue


class _StoredSnapshot(_Frozen):
    last_index: int = 0
    last_term: int = 0
    state: JsonValue


def encode_entry(entry: LogEntry[R], codec: RecordCodec[S, R]) -> str:
    """The entry's line in the log, without the newline."""
    return f'{{"term":{entry.term},"record":{codec.encode_record(entry.record).decode()}}}'


def decode_entry(line: str | bytes, codec: RecordCodec[S, R]) -> LogEntry[R]:
    """Raises ValueError when `line` does not hold an entry."""
    stored = _StoredEntry.model_validate_json(line)
    return LogEntry(term=stored.term, record=codec.decode_record(to_json(stored.record)))


def encode_snapshot(snapshot: Snapshot[S], codec: RecordCodec[S, R]) -> str:
    state = codec.encode_state(snapshot.state).decode()
    return f'{{"last_index":{snapshot.last_index},"last_term":{snapshot.last_term},"state":{state}}}'


def decode_snapshot(text: str | bytes, codec: RecordCodec[S, R]) -> Snapshot[S]:
    stored = _StoredSnapshot.model_validate_json(text)
    return Snapshot(stored.last_index, stored.last_term, codec.decode_state(to_json(stored.state)))


class CompactedError(LookupError):
    """The entry asked for is inside the snapshot: send the snapshot instead."""


def _replace_durably(path: Path, text: str) -> None:
    aside = path.with_suffix(path.suffix + ".tmp")
    with aside.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    aside.replace(path)
    fsync_folder(path.parent)


class RaftStorage(Generic[S, R]):
    def __init__(self, folder: Path, codec: RecordCodec[S, R]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._codec = codec
        hard_path, snapshot_path = folder / HARD_STATE_FILE, folder / SNAPSHOT_FILE
        self._hard_state = HardState.model_validate_json(hard_path.read_text()) if hard_path.exists() else HardState()
        self._snapshot = (
            decode_snapshot(snapshot_path.read_text(), codec)
            if snapshot_path.exists()
            else Snapshot(last_index=0, last_term=0, state=codec.initial_state())
        )
        self._entries = self._load_entries()

    def _load_entries(self) -> list[LogEntry[R]]:
        path = self._folder / LOG_FILE
        if not path.exists():
            return []
        entries: list[LogEntry[R]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = decode_entry(line, self._codec)
            except ValueError:  # includes pydantic's ValidationError
                break  # the torn tail of an append that was never acknowledged
            expected = (entries[-1].index if entries else self._snapshot.last_index) + 1
            if entry.index < expected:
                continue  # compaction wrote the snapshot but died before rewriting the log
            if entry.index != expected:
                break
            entries.append(entry)
        return entries

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def save_hard_state(self, hard_state: HardState) -> None:
        if hard_state != self._hard_state:
            _replace_durably(self._folder / HARD_STATE_FILE, hard_state.model_dump_json())
            self._hard_state = hard_state

    @property
    def snapshot(self) -> Snapshot[S]:
        return self._snapshot

    @property
    def last_index(self) -> int:
        return self._entries[-1].index if self._entries else self._snapshot.last_index

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._snapshot.last_term

    @property
    def entry_count(self) -> int:
        """Entries kept after the snapshot: what compaction bounds."""
        return len(self._entries)

    def term_at(self, index: int) -> int:
        if index == self._snapshot.last_index:
            return self._snapshot.last_term
        if index < self._snapshot.last_index:
            raise CompactedError(index)
        if index > self.last_index:
            return 0
        return self._entries[index - self._snapshot.last_index - 1].term

    def entries_from(self, index: int, limit: int) -> list[LogEntry[R]]:
        if index <= self._snapshot.last_index:
            raise CompactedError(index)
        start = index - self._snapshot.last_index - 1
        return self._entries[start : start + limit]

    def append(self, entries: list[LogEntry[R]]) -> None:
        """Appends entries that follow the last one, fsynced before returning."""
        if not entries:
            return
        if entries[0].index != self.last_index + 1:
            raise ValueError(f"entry {entries[0].index} cannot follow {self.last_index}")
        with (self._folder / LOG_FILE).open("a", encoding="utf-8") as file:
            file.write("".join(encode_entry(entry, self._codec) + "\n" for entry in entries))
            file.flush()
            os.fsync(file.fileno())
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drops the entry at `index` and every later one (a follower's conflicting suffix)."""
        if index <= self._snapshot.last_index:
            raise CompactedError(index)
        self._entries = self._entries[: index - self._snapshot.last_index - 1]
        self._rewrite_log()

    def save_snapshot(self, snapshot: Snapshot[S]) -> None:
        """Keeps `snapshot` and drops the entries it covers; later entries stay when they agree with it."""
        if snapshot.last_index <= self._snapshot.last_index:
            return
        keeps_suffix = (
            snapshot.last_index <= self.last_index and self.term_at(snapshot.last_index) == snapshot.last_term
        )
        remaining = [entry for entry in self._entries if entry.index > snapshot.last_index] if keeps_suffix else []
        _replace_durably(self._folder / SNAPSHOT_FILE, encode_snapshot(snapshot, self._codec))
        self._snapshot = snapshot
        self._entries = remaining
        self._rewrite_log()

    def _rewrite_log(self) -> None:
        lines = "".join(encode_entry(entry, self._codec) + "\n" for entry in self._entries)
        _replace_durably(self._folder / LOG_FILE, lines)
