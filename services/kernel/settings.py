"""Where strata keeps its state and which ports it uses by default.

All state lives under `$STRATA_HOME` (default `~/.strata`): the model store, logs, the node id.
Every command takes `--home` to point elsewhere (tests give each simulated host its own).
"""

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Generator
from pathlib import Path

from services.kernel.ids import NodeId

GATEWAY_PORT = 52415
COORDINATOR_PORT = 52416
SHARD_PORT = 52417
DEFAULT_PREFILL_STEP_SIZE = 256
"""Prompt chunk (mlx-lm defaults to 2048): small enough that a long prompt, prefilled a chunk per step,
does not stall running streams for long. Exactness references use the same chunking."""


def strata_home(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    from_environment = os.environ.get("STRATA_HOME")
    if from_environment:
        return Path(from_environment).expanduser().resolve()
    return Path.home() / ".strata"


def models_root(home: Path) -> Path:
    return home / "models"


def logs_root(home: Path) -> Path:
    return home / "logs"


def node_id(home: Path) -> NodeId:
    """A stable id for this host's `$STRATA_HOME`, created on first use."""
    path = home / "node-id"
    if path.exists():
        return NodeId(path.read_text().strip())
    home.mkdir(parents=True, exist_ok=True)
    created = f"node-{uuid.uuid4().hex[:12]}"
    # Services of one host may start together on a fresh home: each writes its own temporary file and
    # links it into place only if no id is there yet, so all of them read back the one that won.
    temporary = home / f"node-id.{uuid.uuid4().hex}.tmp"
    temporary.write_text(created + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return NodeId(path.read_text().strip())


@contextlib.contextmanager
def home_sharing_models(home: Path) -> Generator[Path]:
    """A temporary `$STRATA_HOME` with its own state (coordinator log, node id) and `home`'s model store.

    Coordinators keep durable state in their home, so two clusters must never share one; models are
    read-only for serving and can be shared.
    """
    private = Path(tempfile.mkdtemp(prefix="strata-home-"))
    try:
        models_root(private).symlink_to(models_root(home).resolve(), target_is_directory=True)
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)
