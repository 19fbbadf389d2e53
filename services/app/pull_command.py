"""`strata models pull REPO[@REVISION] [--id ID] [--replace] [--lazy] [--coordinator ADDR] [--force]`.

Exit 0 stored, 2 refused, 3 too large for the cluster (without --force), 1 Hub unreachable.
"""

import sys
from pathlib import Path

from services.app.pull_fit_check import ModelTooLargeError, cluster_fit_check
from services.models.hub_files import DOWNLOADS_FOLDER
from services.models.hub_pull import default_model_id, parse_repo_reference, pull_model
from services.models.model_families import UnsupportedModelError
from services.models.model_store import ModelStore, parse_model_id
from services.models.pull_errors import HubUnreachableError, PullError

EXIT_TOO_LARGE = 3


def pull(
    store: ModelStore,
    home: Path,
    repository: str,
    model_id_text: str | None,
    *,
    replace: bool,
    lazy: bool = False,
    coordinator: str | None = None,
    force: bool = False,
) -> int:
    """`coordinator`: ask it whether the model fits before fetching weights (None: do not ask)."""
    try:
        reference = parse_repo_reference(repository)
        model_id = parse_model_id(model_id_text) if model_id_text else default_model_id(reference.repo_id)
    except ValueError as error:
        print(f"strata models pull: {error}", file=sys.stderr)
        return 2
    size_check = cluster_fit_check(coordinator, model_id, force=force) if coordinator else None
    try:
        path = pull_model(
            store,
            reference,
            home / DOWNLOADS_FOLDER,
            model_id=model_id,
            replace=replace,
            lazy=lazy,
            size_check=size_check,
        )
    except HubUnreachableError as error:
        print(f"strata models pull: {error}", file=sys.stderr)
        return 1
    except ModelTooLargeError as error:
        print(f"strata models pull: refused: {error}", file=sys.stderr)
        return EXIT_TOO_LARGE
    except (PullError, UnsupportedModelError) as error:
        print(f"strata models pull: refused: {error}", file=sys.stderr)
        return 2
    weights = "its weights stay on the Hub until a shard needs them" if lazy else "weights included"
    print(f"{path.name} is in the store at {path} (from {reference.repo_id}@{reference.revision}; {weights})")
    return 0
