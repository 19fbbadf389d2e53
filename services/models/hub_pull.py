"""`strata models pull REPO[@REVISION]`: a model from the Hugging Face Hub (or a mirror) into the store.

huggingface_hub does the talking: HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured by it, and
`hf_hub_download` into a `local_dir` resumes an interrupted file (HTTP Range, `.incomplete` files).
strata adds what a store needs: only the files a model needs, the family refused from config.json
before any weight travels, and every LFS file checked against the sha256 the listing gives. The Hub
side lives in `services.models.hub_files` (no MLX); this module adds the import into the store.
"""

import shutil
from pathlib import Path

from services.kernel.ids import ModelId
from services.models.hub_files import (
    HubUnreachableError,
    PullError,
    PullRequest,
    check_downloaded_family,
    default_model_id,
    download_file,
    list_needed_files,
    parse_repo_reference,
)
from services.models.model_config import CONFIG_FILE
from services.models.model_import import import_directory
from services.models.model_store import ModelStore

__all__ = ["HubUnreachableError", "PullError", "PullRequest", "default_model_id", "parse_repo_reference", "pull_model"]


def pull_model(
    store: ModelStore,
    reference: PullRequest,
    downloads_root: Path,
    *,
    model_id: ModelId | None = None,
    endpoint: str | None = None,
    replace: bool = False,
) -> Path:
    """Download `reference` into `downloads_root/<repo>` and import it into the store; returns its folder.

    A model already stored under the id is left as it is unless `replace` (no Hub request then).

    Raises PullError (Hub refusals, a corrupted file) or UnsupportedModelError (before any weight).
    """
    target_id = model_id or default_model_id(reference.repo_id)
    if store.has_model(target_id) and not replace:
        return store.model_dir(target_id)  # as `strata models import`: a no-op, and no Hub traffic
    commit, files = list_needed_files(reference.repo_id, reference.revision, endpoint=endpoint)
    download_dir = downloads_root / reference.repo_id
    download_dir.mkdir(parents=True, exist_ok=True)
    # config.json first, so an unsupported family is refused before any weight is fetched.
    ordered = sorted(files, key=lambda file: (file.name != CONFIG_FILE, file.name.endswith(".safetensors"), file.name))
    for file in ordered:
        download_file(reference, commit, file, download_dir, endpoint)
        if file.name == CONFIG_FILE:
            check_downloaded_family(reference, download_dir)
    try:
        model_dir = import_directory(store, target_id, download_dir, replace=replace)
    except ValueError as error:
        raise PullError(f"{reference.repo_id}@{reference.revision}: {error}") from error
    # Kept only while the pull is unfinished (to resume it); once stored, a second copy is wasted disk.
    shutil.rmtree(download_dir, ignore_errors=True)
    return model_dir
