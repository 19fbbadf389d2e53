"""Where strata keeps its state and which ports it uses by default.

All state lives under `$STRATA_HOME` (default `~/.strata`): the model store, logs, the node id.
Every command takes `--home` to point elsewhere (tests give each simulated host its own).
"""

import os
import uuid
from pathlib import Path

from services.ids import NodeId

GATEWAY_PORT = 52415
COORDINATOR_PORT = 52416
SHARD_PORT = 52417
DEFAULT_PREFILL_STEP_SIZE = 2048
"""mlx-lm's default prompt chunk; chunk boundaries depend only on token positions."""


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
    temporary = path.with_suffix(".tmp")
    temporary.write_text(created + "\n")
    temporary.replace(path)
    return NodeId(created)
