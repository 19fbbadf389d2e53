"""`strata models pull REPO[@REVISION] [--id ID] [--replace]`: exit 0 stored, 2 refused, 1 Hub unreachable."""

import sys
from pathlib import Path

from services.models.hub_files import DOWNLOADS_FOLDER
from services.models.hub_pull import HubUnreachableError, PullError, default_model_id, parse_repo_reference, pull_model
from services.models.model_families import UnsupportedModelError
from services.models.model_store import ModelStore, parse_model_id


def pull(store: ModelStore, home: Path, repository: str, model_id_text: str | None, *, replace: bool) -> int:
    try:
        reference = parse_repo_reference(repository)
        model_id = parse_model_id(model_id_text) if model_id_text else default_model_id(reference.repo_id)
    except ValueError as error:
        print(f"strata models pull: {error}", file=sys.stderr)
        return 2
    try:
        path = pull_model(store, reference, home / DOWNLOADS_FOLDER, model_id=model_id, replace=replace)
    except HubUnreachableError as error:
        print(f"strata models pull: {error}", file=sys.stderr)
        return 1
    except (PullError, UnsupportedModelError) as error:
        print(f"strata models pull: refused: {error}", file=sys.stderr)
        return 2
    print(f"{path.name} is in the store at {path} (from {reference.repo_id}@{reference.revision})")
    return 0
