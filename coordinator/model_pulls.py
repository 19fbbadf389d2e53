"""Pulls of models from the Hugging Face Hub into this coordinator replica's store, with their progress.

A pull is refused before anything is downloaded, as a status error, when its reference or id is
malformed, the Hub knows no such repository or revision, the repository is gated, offline mode is on,
the repository holds no model, or its family cannot be split (config.json is fetched first). All of it
runs in a thread, never on the event loop. Then `strata models pull` runs as a child process in this
replica's home: the import into the store needs MLX, which a coordinator never loads, and the child
inherits HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE. Its progress is read from the sizes of the files in
its download folder twice a second (huggingface_hub writes each file as `<hash>.<etag>.incomplete`, and
a weight file's etag is its sha256). The pulls in progress and the last `KEPT_PULLS` ended ones are kept.

Why the coordinator's store: serving reads a model's spec from there, and shard servers and gateways
fetch the files they lack from the coordinator, so a pulled model is servable at once.
"""

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.kernel.ids import ModelId, NodeId
from services.kernel.status_errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    StatusError,
    UnavailableError,
)
from services.models.hub_files import (
    DOWNLOADS_FOLDER,
    GatedRepositoryError,
    HubFile,
    HubOfflineError,
    HubUnreachableError,
    NotAModelRepositoryError,
    PullError,
    PullRequest,
    UnknownRepositoryError,
    UnknownRevisionError,
    check_downloaded_family,
    default_model_id,
    download_file,
    incomplete_path,
    list_needed_files,
    parse_repo_reference,
)
from services.models.model_config import CONFIG_FILE
from services.models.model_families import UnsupportedModelError
from services.models.model_store import ModelStore, parse_model_id

logger = logging.getLogger(__name__)

PullState = Literal["downloading", "importing", "done", "failed"]
ACTIVE_STATES: frozenset[PullState] = frozenset({"downloading", "importing"})
KEPT_PULLS = 16
PROGRESS_SECONDS = 0.5
SPEED_WINDOW_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0
ERROR_TAIL_BYTES = 4096
_CLI_PREFIXES = ("strata models pull: refused: ", "strata models pull: ")


class PulledFile(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    name: str
    sha256: str | None
    bytes_done: int
    bytes_total: int


class ModelPull(BaseModel):
    """One pull as `GetState` reports it."""

    model_config = ConfigDict(frozen=True, strict=True)

    pull_id: str
    repository: str
    revision: str
    model_id: ModelId
    node_id: NodeId
    state: PullState
    files: tuple[PulledFile, ...] = ()
    bytes_per_second: float = 0.0
    eta_seconds: float | None = None
    error: str = ""
    started_at: float

    @property
    def bytes_done(self) -> int:
        return sum(file.bytes_done for file in self.files)

    @property
    def bytes_total(self) -> int:
        return sum(file.bytes_total for file in self.files)


@dataclass
class _Running:
    pull: ModelPull
    download_dir: Path
    process: asyncio.subprocess.Process | None = None
    samples: list[tuple[float, int]] = field(default_factory=list[tuple[float, int]])
    task: asyncio.Task[None] | None = None


def refusal_status(error: PullError | UnsupportedModelError) -> StatusError:
    """The status a refused pull is answered with."""
    match error:
        case UnknownRepositoryError() | UnknownRevisionError():
            return NotFoundError(str(error))
        case GatedRepositoryError():
            return StatusError(str(error), status="PERMISSION_DENIED")
        case HubUnreachableError():
            return UnavailableError(str(error))
        case HubOfflineError() | NotAModelRepositoryError() | UnsupportedModelError():
            return FailedPreconditionError(str(error))
        case _:
            return FailedPreconditionError(str(error))


def file_progress(download_dir: Path, file: HubFile) -> int:
    """Bytes of `file` in `download_dir` now: the whole file once there, else its `.incomplete` part."""
    final = download_dir / file.name
    with contextlib.suppress(FileNotFoundError):
        return final.stat().st_size
    if file.sha256 is None:
        return 0  # small files kept in git: their etag is not in the listing; they are done at once
    partial = 0
    with contextlib.suppress(FileNotFoundError):  # strata's own resumable download of a weight file
        partial = incomplete_path(download_dir, file.name, file.sha256).stat().st_size
    for candidate in (download_dir / ".cache" / "huggingface" / "download").glob(f"*.{file.sha256}.incomplete"):
        with contextlib.suppress(FileNotFoundError):
            partial = max(partial, candidate.stat().st_size)
    return partial


def _checked_before_start(
    reference: PullRequest, download_dir: Path, endpoint: str | None
) -> tuple[str, list[HubFile]]:  # runs in a thread: the Hub and the disk
    commit, files = list_needed_files(reference.repo_id, reference.revision, endpoint=endpoint)
    download_dir.mkdir(parents=True, exist_ok=True)
    [config] = [file for file in files if file.name == CONFIG_FILE]
    download_file(reference, commit, config, download_dir, endpoint)
    check_downloaded_family(reference, download_dir)
    return commit, files


def _cli_error(stderr: bytes, returncode: int) -> str:
    lines = [line.strip() for line in stderr[-ERROR_TAIL_BYTES:].decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return f"strata models pull exited with status {returncode}"
    last = lines[-1]
    for prefix in _CLI_PREFIXES:
        if last.startswith(prefix):
            return last.removeprefix(prefix)
    return last


class ModelPulls:
    """The pulls of one replica; `start` and `stop` run on the event loop, the work off it."""

    def __init__(
        self,
        home: Path,
        node_id: NodeId,
        store: ModelStore,
        command: Sequence[str] | None = None,
        endpoint: str | None = None,
    ) -> None:
        """`command`: the argv that runs the CLI (default: this interpreter's `-m services.app.cli`);
        `endpoint`: the Hub's URL (default: HF_ENDPOINT as huggingface_hub read it at import; the child
        gets it as HF_ENDPOINT)."""
        self._endpoint = endpoint
        self._home = home
        self._node_id = node_id
        self._store = store
        self._command = tuple(command) if command is not None else (sys.executable, "-m", "services.app.cli")
        self._running: dict[str, _Running] = {}
        self._ended: list[ModelPull] = []
        self._starting = asyncio.Lock()

    def pulls(self) -> list[ModelPull]:
        """In progress (oldest first), then ended (newest first)."""
        active = sorted((run.pull for run in self._running.values()), key=lambda pull: pull.started_at)
        return [*active, *self._ended]

    async def start(self, repository: str, model_id_text: str, *, replace: bool) -> ModelPull:
        """Starts a pull, or returns the one in progress for the same repository and id; raises a
        `StatusError` when it is refused (see the module's docstring)."""
        try:
            reference = parse_repo_reference(repository)
            model_id = parse_model_id(model_id_text) if model_id_text else default_model_id(reference.repo_id)
        except ValueError as error:
            raise InvalidArgumentError(str(error)) from error
        async with self._starting:  # one start at a time: two requests for one repository never both run
            for run in self._running.values():
                if run.pull.repository == reference.repo_id or run.pull.model_id == model_id:
                    if run.pull.repository == reference.repo_id and run.pull.model_id == model_id:
                        return run.pull
                    raise AlreadyExistsError(
                        f"a pull of {run.pull.repository} into {run.pull.model_id} is in progress; wait for it to end"
                    )
            pull = ModelPull(
                pull_id=uuid.uuid4().hex[:12],
                repository=reference.repo_id,
                revision=reference.revision,
                model_id=model_id,
                node_id=self._node_id,
                state="downloading",
                started_at=time.time(),
            )
            if not replace and await asyncio.to_thread(self._store.has_model, model_id):
                done = pull.model_copy(update={"state": "done"})
                self._remember(done)
                return done  # as `strata models pull`: stored already, no Hub traffic
            download_dir = self._home / DOWNLOADS_FOLDER / reference.repo_id
            try:
                commit, files = await asyncio.to_thread(_checked_before_start, reference, download_dir, self._endpoint)
            except (PullError, UnsupportedModelError) as error:
                raise refusal_status(error) from error
            pulled = tuple(
                PulledFile(name=file.name, sha256=file.sha256, bytes_done=0, bytes_total=file.size or 0)
                for file in files
            )
            run = _Running(pull=pull.model_copy(update={"files": pulled}), download_dir=download_dir)
            run.process = await asyncio.create_subprocess_exec(
                *self._command,
                "models",
                "pull",
                f"{reference.repo_id}@{commit}",
                "--home",
                str(self._home),
                "--id",
                model_id,
                *(["--replace"] if replace else []),
                # No fit check from the child: it would ask whatever coordinator its default address
                # reaches; the page's placement preview says whether the model fits.
                "--force",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={
                    **os.environ,
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                    **({"HF_ENDPOINT": self._endpoint} if self._endpoint else {}),
                },
            )
            logger.info("pulling %s@%s into %s (pid %d)", reference.repo_id, commit, model_id, run.process.pid)
            self._running[pull.pull_id] = run
            run.task = asyncio.create_task(self._follow(run, files))
            return run.pull

    async def _follow(self, run: _Running, files: list[HubFile]) -> None:
        process = run.process
        assert process is not None and process.stderr is not None
        reading = asyncio.create_task(process.stderr.read())
        while not reading.done():
            await asyncio.wait({reading}, timeout=PROGRESS_SECONDS)
            await self._measure(run, files)
        stderr = reading.result()
        returncode = await process.wait()
        if returncode == 0:
            complete = tuple(file.model_copy(update={"bytes_done": file.bytes_total}) for file in run.pull.files)
            ended = run.pull.model_copy(update={"state": "done", "files": complete, "eta_seconds": 0.0})
            logger.info("pulled %s into %s", run.pull.repository, run.pull.model_id)
        else:
            ended = run.pull.model_copy(update={"state": "failed", "error": _cli_error(stderr, returncode)})
            logger.warning("pull of %s failed: %s", run.pull.repository, ended.error)
        self._running.pop(run.pull.pull_id, None)
        self._remember(ended)

    async def _measure(self, run: _Running, files: list[HubFile]) -> None:
        sizes = await asyncio.to_thread(lambda: [file_progress(run.download_dir, file) for file in files])
        # Never backwards: the download folder is deleted once the model is imported.
        updated = tuple(
            pulled.model_copy(update={"bytes_done": max(pulled.bytes_done, min(size, pulled.bytes_total or size))})
            for pulled, size in zip(run.pull.files, sizes, strict=True)
        )
        now = time.monotonic()
        done = sum(file.bytes_done for file in updated)
        run.samples = [sample for sample in run.samples if now - sample[0] <= SPEED_WINDOW_SECONDS]
        run.samples.append((now, done))
        first_time, first_done = run.samples[0]
        speed = (done - first_done) / (now - first_time) if now > first_time else 0.0
        total = sum(file.bytes_total for file in updated)
        finished = all(file.bytes_done >= file.bytes_total for file in updated)
        eta = 0.0 if finished else ((total - done) / speed if speed > 0 else None)
        state: PullState = "importing" if finished else "downloading"
        run.pull = run.pull.model_copy(
            update={"files": updated, "bytes_per_second": speed, "eta_seconds": eta, "state": state}
        )

    def _remember(self, pull: ModelPull) -> None:
        self._ended = [pull, *self._ended][:KEPT_PULLS]

    async def stop(self) -> None:
        """Stops every child pull (SIGTERM, then SIGKILL after a grace period); they end as failed."""
        for run in list(self._running.values()):
            process = run.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)
                    await process.wait()
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await run.task
