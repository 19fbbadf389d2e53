"""Durable Raft state under $STRATA_HOME/coordinator/: term and vote, the log, one snapshot.

Every write is fsynced before the call returns, so whatever a replica acknowledged survives a power
cut. Files: `hard_state.json` and `snapshot.json` are replaced atomically (write aside, fsync,
rename, fsync the folder); `log.jsonl` holds one entry per line after the snapshot and is appended
to; truncation and compaction rewrite it atomically. A torn last line (power cut mid-append) was
never acknowledged and is dropped on load.
"""

import os
from pathlib import Path

from pydantic import ValidationError

from services.cluster.events import IndexedEvent
from services.cluster.state import ClusterState, Frozen

HARD_STATE_FILE = "hard_state.json"
SNAPSHOT_FILE = "snapshot.json"
LOG_FILE = "log.jsonl"


class LogEntry(Frozen):
    term: int
    record: IndexedEvent

    @property
    def index(self) -> int:
        return self.record.index


class HardState(Frozen):
    current_term: int = 0
    voted_for: str | None = None
    voters: tuple[str, ...] = ()
    """The voting members once the cluster is bootstrapped; empty before."""


class Snapshot(Frozen):
    last_index: int = 0
    last_term: int = 0
    state: ClusterState = ClusterState()


class CompactedError(LookupError):
    """The entry asked for is inside the snapshot: send the snapshot instead."""


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_durably(path: Path, text: str) -> None:
    aside = path.with_suffix(path.suffix + ".tmp")
    with aside.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    aside.replace(path)
    _fsync_folder(path.parent)


class RaftStorage:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        hard_path, snapshot_path = folder / HARD_STATE_FILE, folder / SNAPSHOT_FILE
        self._hard_state = HardState.model_validate_json(hard_path.read_text()) if hard_path.exists() else HardState()
        self._snapshot = (
            Snapshot.model_validate_json(snapshot_path.read_text()) if snapshot_path.exists() else Snapshot()
        )
        self._entries = self._load_entries()

    def _load_entries(self) -> list[LogEntry]:
        path = self._folder / LOG_FILE
        if not path.exists():
            return []
        entries: list[LogEntry] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = LogEntry.model_validate_json(line)
            except ValidationError:
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
    def snapshot(self) -> Snapshot:
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

    def entries_from(self, index: int, limit: int) -> list[LogEntry]:
        if index <= self._snapshot.last_index:
            raise CompactedError(index)
        start = index - self._snapshot.last_index - 1
        return self._entries[start : start + limit]

    def append(self, entries: list[LogEntry]) -> None:
        """Appends entries that follow the last one, fsynced before returning."""
        if not entries:
            return
        if entries[0].index != self.last_index + 1:
            raise ValueError(f"entry {entries[0].index} cannot follow {self.last_index}")
        with (self._folder / LOG_FILE).open("a", encoding="utf-8") as file:
            file.write("".join(entry.model_dump_json() + "\n" for entry in entries))
            file.flush()
            os.fsync(file.fileno())
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drops the entry at `index` and every later one (a follower's conflicting suffix)."""
        if index <= self._snapshot.last_index:
            raise CompactedError(index)
        self._entries = self._entries[: index - self._snapshot.last_index - 1]
        self._rewrite_log()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keeps `snapshot` and drops the entries it covers; later entries stay when they agree with it."""
        if snapshot.last_index <= self._snapshot.last_index:
            return
        keeps_suffix = (
            snapshot.last_index <= self.last_index and self.term_at(snapshot.last_index) == snapshot.last_term
        )
        remaining = [entry for entry in self._entries if entry.index > snapshot.last_index] if keeps_suffix else []
        _replace_durably(self._folder / SNAPSHOT_FILE, snapshot.model_dump_json())
        self._snapshot = snapshot
        self._entries = remaining
        self._rewrite_log()

    def _rewrite_log(self) -> None:
        _replace_durably(self._folder / LOG_FILE, "".join(entry.model_dump_json() + "\n" for entry in self._entries))
