"""`strata models pull REPO[@REVISION]`: a model from the Hugging Face Hub (or a mirror) into the store.

huggingface_hub does the talking: HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured by it, and
`hf_hub_download` into a `local_dir` resumes an interrupted file (HTTP Range, `.incomplete` files).
strata adds what a store needs: only the files a model needs, the family refused from config.json
before any weight travels, and every LFS file checked against the sha256 the listing gives.
"""

import importlib
import os
import re
import shutil
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, cast

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoSibling
from pydantic import BaseModel, ConfigDict

from services.kernel.ids import ModelId
from services.models.hub_http import file_url, progress_bar, stream_from
from services.models.lazy_pull import TensorPlace, WeightFile, read_hub_header, store_lazily
from services.models.model_config import CONFIG_FILE, ModelConfig, ModelConfigError, read_model_config
from services.models.model_families import check_supported
from services.models.model_file_service import sha256_of
from services.models.model_import import import_directory
from services.models.model_store import ModelStore, parse_model_id
from services.models.pull_errors import HubUnreachableError, PullError

DEFAULT_REVISION = "main"
_NEEDED_FILES = frozenset(
    {
        CONFIG_FILE,
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
    }
)
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class _Download(Protocol):
    def __call__(self, repo_id: str, filename: str, *, revision: str, local_dir: Path, endpoint: str | None) -> str: ...


# Its overloads carry an untyped `user_agent: dict`; the one call strata makes, typed.
_hf_hub_download = cast(_Download, importlib.import_module("huggingface_hub").hf_hub_download)


class HubFile(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    name: str
    sha256: str | None
    """From the listing's LFS pointer; None for small files kept in git (no hash to check against)."""
    size: int | None = None
    """From the listing's LFS pointer (with the sha256)."""


class PullRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    repo_id: str
    revision: str


def parse_repo_reference(text: str) -> PullRequest:
    """`owner/name[@revision]`; raises ValueError for anything else."""
    repo_id, _, revision = text.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or (("@" in text) and not revision):
        raise ValueError(f"invalid repository {text!r}: use OWNER/NAME or OWNER/NAME@REVISION")
    return PullRequest(repo_id=repo_id, revision=revision or DEFAULT_REVISION)


def default_model_id(repo_id: str) -> ModelId:
    """The repository's name, lowercased: `HuggingFaceTB/SmolLM2-135M-Instruct` -> `smollm2-135m-instruct`."""
    return parse_model_id(repo_id.rsplit("/", 1)[-1].lower())


def is_needed(file_name: str) -> bool:
    """Config, tokenizer, chat template and top-level safetensors weights; not other formats or docs."""
    if "/" in file_name:
        return False
    return file_name in _NEEDED_FILES or file_name.endswith(".safetensors")


def list_needed_files(
    repo_id: str, revision: str, *, endpoint: str | None = None, token: str | None = None
) -> tuple[str, list[HubFile]]:
    """The revision's commit and the files to fetch; raises PullError when the Hub refuses."""
    with _hub_errors(repo_id, revision):
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True)
    siblings: Sequence[RepoSibling] = info.siblings or []
    files = [
        HubFile(
            name=sibling.rfilename,
            sha256=sibling.lfs.sha256 if sibling.lfs else None,
            size=sibling.lfs.size if sibling.lfs else None,
        )
        for sibling in siblings
        if is_needed(sibling.rfilename)
    ]
    names = {file.name for file in files}
    if CONFIG_FILE not in names:
        raise PullError(f"{repo_id}@{revision} has no {CONFIG_FILE}: not a transformers/MLX model repository")
    if not any(name.endswith(".safetensors") for name in names):
        raise PullError(f"{repo_id}@{revision} has no *.safetensors weights (other formats are not supported)")
    if info.sha is None:
        raise PullError(f"{repo_id}@{revision}: the Hub did not say which commit the revision is")
    return info.sha, sorted(files, key=lambda file: file.name)


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
        with _hub_errors(reference.repo_id, reference.revision):
            for file in weight_files:
                url = file_url(reference.repo_id, file.name, commit, endpoint)
                places[file.name] = read_hub_header(url, file.name, _listed_size(where, file))
    if size_check is not None and places:
        size_check(read_model_config(download_dir), places)
    if lazy:
        with _hub_errors(reference.repo_id, reference.revision):
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
    if file.sha256 is not None and file.size is not None:
        path = download_dir / file.name
        if not path.is_file():
            with _hub_errors(reference.repo_id, reference.revision):
                _download_resumable(file_url(reference.repo_id, file.name, commit, endpoint), file, download_dir)
    else:
        with _hub_errors(reference.repo_id, reference.revision):
            # The commit, not the branch: every file of one pull comes from the same revision.
            path = Path(
                _hf_hub_download(
                    reference.repo_id, file.name, revision=commit, local_dir=download_dir, endpoint=endpoint
                )
            )
    if file.sha256 is not None and (actual := sha256_of(path)) != file.sha256:
        path.unlink()  # a later pull fetches it again rather than trusting it
        raise PullError(
            f"{reference.repo_id}@{reference.revision}: {file.name} is corrupted "
            f"(sha256 {actual}, the Hub lists {file.sha256}); it was deleted, nothing was stored"
        )


def incomplete_path(download_dir: Path, name: str, sha256: str) -> Path:
    """Where a weight file grows while it downloads; kept when a pull stops, resumed by the next one.
    Named by the listed sha256 too, so that bytes of another version of the file are never resumed."""
    return download_dir / f".{name}.{sha256[:16]}.incomplete"


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


@contextmanager
def _hub_errors(repo_id: str, revision: str) -> Generator[None]:
    """Turns huggingface_hub's errors into PullError messages naming the repository and revision."""
    where = f"{repo_id}@{revision}"
    try:
        yield
    except GatedRepoError as error:
        raise PullError(f"{repo_id} is gated: accept its terms on the Hub and set HF_TOKEN") from error
    except RepositoryNotFoundError as error:
        raise PullError(f"repository {repo_id!r} not found (or private: set HF_TOKEN)") from error
    except RevisionNotFoundError as error:
        raise PullError(f"revision {revision!r} not found in {repo_id}") from error
    except OfflineModeIsEnabled as error:
        raise PullError(f"cannot pull {where}: HF_HUB_OFFLINE is set") from error
    except HfHubHTTPError as error:
        raise PullError(f"the Hub refused {where}: {error}") from error
    except (OSError, httpx2.TransportError) as error:
        # Connection refused, DNS, a file the library gave up resuming: the network, not the model.
        raise HubUnreachableError(f"could not reach the Hub for {where}: {error}") from error
