"""Making a write survive a crash: flush a folder's entry list after files in it were created or renamed."""

import os
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    """Flush `folder` itself, so a rename or a new file inside it is on disk, not only the file's data."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
