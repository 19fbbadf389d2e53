"""`strata models pull REPO[@REVISION]`: a model from the Hugging Face Hub (or a mirror) into the store.

huggingface_hub lists the repository and fetches small files (HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE
honoured); weight files are fetched by strata's own reads (`services.models.hub_http`), appended to a
`.incomplete` file that the next pull resumes from. strata adds what a store needs: only the files a
model needs, the family refused from config.json before any weight travels, and every LFS file checked
against the sha256 the listing gives. The Hub side lives in `services.models.hub_files` (no MLX); this
module adds the import into the store (and the lazy variant, `services.models.lazy_pull`).
"""

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from services.kernel.ids import ModelId
from services.models.hub_files import (
    HubFile,
    PullRequest,
    default_model_id,
    download_file,
    hub_errors,
    incomplete_path,
    list_needed_files,
    parse_repo_reference,
)
from services.models.hub_http import file_url, progress_bar, stream_from
from services.models.lazy_pull import TensorPlace, WeightFile, read_hub_header, store_lazily
from services.models.model_config import CONFIG_FILE, ModelConfig, ModelConfigError, read_model_config
from services.models.model_families import check_supported
from services.models.model_file_service import sha256_of
from services.models.model_import import import_directory
from services.models.model_store import ModelStore
from services.models.pull_errors import HubUnreachableError, PullError

__all__ = [
    "HubUnreachableError",
    "PullError",
    "PullRequest",
    "default_model_id",
    "incomplete_path",
    "parse_repo_reference",
    "pull_model",
]


SizeCheck = Callable[[ModelConfig, Mapping[str, dict[str, TensorPlace]]], None]
"""Given the config and every weight file's tensors (from their headers), raises PullError to stop the
pull before any weight is fetched (the cluster is too small, say)."""


def pull_model(
    store: ModelStore,
    reference: PullRequest,
    downloads_root: Path,
    *,
    model_id: ModelId | None = None,
    endpoint: str | None = None,
    replace: bool = False,
    lazy: bool = False,
    size_check: SizeCheck | None = None,
) -> Path:
    """Download `reference` into `downloads_root/<repo>` and import it into the store; returns its folder.

    A model already stored under the id is left as it is unless `replace` (no Hub request then).
    `lazy`: store it without its weight files (see `services.models.lazy_pull`). `size_check`: called
    once the headers are read, before any weight is fetched.

    Raises PullError (Hub refusals, a corrupted file) or UnsupportedModelError (before any weight).
    """
    target_id = model_id or default_model_id(reference.repo_id)
    if store.has_model(target_id) and not replace:
        return store.model_dir(target_id)  # as `strata models import`: a no-op, and no Hub traffic
    where = f"{reference.repo_id}@{reference.revision}"
    commit, files = list_needed_files(reference.repo_id, reference.revision, endpoint=endpoint)
    download_dir = downloads_root / reference.repo_id
    download_dir.mkdir(parents=True, exist_ok=True)
    weight_files = [file for file in files if file.name.endswith(".safetensors")]
    # config.json first, so an unsupported family is refused before any weight is fetched.
    ordered = sorted(files, key=lambda file: (file.name != CONFIG_FILE, file.name))
    for file in ordered:
        if file in weight_files:
            continue
        _download(reference, commit, file, download_dir, endpoint)
        if file.name == CONFIG_FILE:
            try:
                check_supported(read_model_config(download_dir))
            except ModelConfigError as error:
                raise PullError(f"{where}: {error}") from error
    places: dict[str, dict[str, TensorPlace]] = {}
    # A full pull of weights the listing gives no size for (kept in git, not LFS) skips the size check.
    sized = all(file.size is not None for file in weight_files)
    if lazy or (size_check is not None and sized):
        with hub_errors(reference.repo_id, reference.revision):
            for file in weight_files:
                url = file_url(reference.repo_id, file.name, commit, endpoint)
                places[file.name] = read_hub_header(url, file.name, _listed_size(where, file))
    if size_check is not None and places:
        size_check(read_model_config(download_dir), places)
    if lazy:
        with hub_errors(reference.repo_id, reference.revision):
            model_dir = store_lazily(
                store,
                target_id,
                where,
                reference.repo_id,
                commit,
                download_dir,
                [
                    WeightFile(name=file.name, size=_listed_size(where, file), sha256=_listed_sha256(where, file))
                    for file in weight_files
                ],
                endpoint=endpoint,
                replace=replace,
                headers=lambda weight_file: places[weight_file.name],
            )
    else:
        for file in weight_files:
            _download(reference, commit, file, download_dir, endpoint)
        try:
            model_dir = import_directory(store, target_id, download_dir, replace=replace)
        except ValueError as error:
            raise PullError(f"{where}: {error}") from error
    # Kept only while the pull is unfinished (to resume it); once stored, a second copy is wasted disk.
    shutil.rmtree(download_dir, ignore_errors=True)
    return model_dir


def _listed_size(where: str, file: HubFile) -> int:
    if file.size is None:
        raise PullError(f"{where}: the Hub listing gives no size for {file.name}")
    return file.size


def _listed_sha256(where: str, file: HubFile) -> str:
    if file.sha256 is None:
        raise PullError(f"{where}: the Hub listing gives no sha256 for {file.name}")
    return file.sha256


def _download(reference: PullRequest, commit: str, file: HubFile, download_dir: Path, endpoint: str | None) -> None:
    """A weight or LFS file by strata's own resumable reads; a small file kept in git by huggingface_hub.
    Either way checked against the listed sha256."""
    if file.sha256 is None or file.size is None:
        download_file(reference, commit, file, download_dir, endpoint)
        return
    path = download_dir / file.name
    if not path.is_file():
        with hub_errors(reference.repo_id, reference.revision):
            _download_resumable(file_url(reference.repo_id, file.name, commit, endpoint), file, download_dir)
    if (actual := sha256_of(path)) != file.sha256:
        path.unlink()  # a later pull fetches it again rather than trusting it
        raise PullError(
            f"{reference.repo_id}@{reference.revision}: {file.name} is corrupted "
            f"(sha256 {actual}, the Hub lists {file.sha256}); it was deleted, nothing was stored"
        )


def _download_resumable(url: str, file: HubFile, download_dir: Path) -> None:
    """A weight file appended to its `.incomplete` file from the length already there (this pull's or an
    earlier one's), then renamed into place; its sha256 is checked by the caller."""
    assert file.size is not None and file.sha256 is not None
    partial = incomplete_path(download_dir, file.name, file.sha256)
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > file.size:
        partial.unlink()
        offset = 0
    with partial.open("ab") as output, progress_bar(file.name, file.size, offset) as progress:

        def write(chunk: bytes) -> None:
            output.write(chunk)
            progress.update(len(chunk))

        stream_from(url, offset, file.size, write)
        output.flush()
        os.fsync(output.fileno())
    partial.replace(download_dir / file.name)
