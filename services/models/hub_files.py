"""The Hub side of a pull, without MLX: references, the listing of the files a model needs, one file's
download with its sha256 check, the family check from config.json, and the errors, by kind.

`services.models.hub_pull` puts these together with the import into the store (which needs MLX); a
coordinator uses them alone to refuse a pull before it starts one (see coordinator/model_pulls.py).
huggingface_hub does the talking: HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured by it.
"""

import importlib
import re
from collections.abc import Generator, Sequence
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
from services.models.model_config import CONFIG_FILE, ModelConfigError, read_model_config
from services.models.model_families import check_supported
from services.models.model_file_service import sha256_of
from services.models.model_store import parse_model_id
from services.models.pull_errors import HubUnreachableError, PullError

DEFAULT_REVISION = "main"
DOWNLOADS_FOLDER = "downloads"
"""Under STRATA_HOME: the files as the Hub has them, kept so that an interrupted pull resumes."""
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


class UnknownRepositoryError(PullError):
    """The Hub shows no such repository (absent, or private without a token)."""


class UnknownRevisionError(PullError):
    """The repository has no such branch, tag or commit."""


class GatedRepositoryError(PullError):
    """The repository needs its terms accepted and HF_TOKEN."""


class HubOfflineError(PullError):
    """HF_HUB_OFFLINE forbids asking the Hub."""


class NotAModelRepositoryError(PullError):
    """The repository lacks config.json or safetensors weights, or its config cannot be read."""


class HubFile(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    name: str
    sha256: str | None
    """From the listing's LFS pointer; None for small files kept in git (no hash to check against)."""
    size: int | None = None
    """Bytes, when the listing says (progress reports use it)."""


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
    with hub_errors(repo_id, revision):
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True)
    siblings: Sequence[RepoSibling] = info.siblings or []
    files = [
        HubFile(
            name=sibling.rfilename,
            sha256=sibling.lfs.sha256 if sibling.lfs else None,
            size=sibling.lfs.size if sibling.lfs else sibling.size,
        )
        for sibling in siblings
        if is_needed(sibling.rfilename)
    ]
    names = {file.name for file in files}
    if CONFIG_FILE not in names:
        raise NotAModelRepositoryError(
            f"{repo_id}@{revision} has no {CONFIG_FILE}: not a transformers/MLX model repository"
        )
    if not any(name.endswith(".safetensors") for name in names):
        raise NotAModelRepositoryError(
            f"{repo_id}@{revision} has no *.safetensors weights (other formats are not supported)"
        )
    if info.sha is None:
        raise PullError(f"{repo_id}@{revision}: the Hub did not say which commit the revision is")
    return info.sha, sorted(files, key=lambda file: file.name)


def download_file(reference: PullRequest, commit: str, file: HubFile, download_dir: Path, endpoint: str | None) -> None:
    """One file into `download_dir` (resumed when a part is there), checked against its listed sha256."""
    with hub_errors(reference.repo_id, reference.revision):
        # The commit, not the branch: every file of one pull comes from the same revision.
        path = Path(
            _hf_hub_download(reference.repo_id, file.name, revision=commit, local_dir=download_dir, endpoint=endpoint)
        )
    if file.sha256 is not None and (actual := sha256_of(path)) != file.sha256:
        path.unlink()  # a later pull fetches it again rather than trusting it
        raise PullError(
            f"{reference.repo_id}@{reference.revision}: {file.name} is corrupted "
            f"(sha256 {actual}, the Hub lists {file.sha256}); it was deleted, nothing was stored"
        )


def incomplete_path(download_dir: Path, name: str, sha256: str) -> Path:
    """Where `strata models pull` grows a weight file while it downloads; kept when a pull stops, resumed
    by the next one. Named by the listed sha256 too, so that bytes of another version are never resumed."""
    return download_dir / f".{name}.{sha256[:16]}.incomplete"


def check_downloaded_family(reference: PullRequest, download_dir: Path) -> None:
    """Refuses (UnsupportedModelError, NotAModelRepositoryError) a family the shards cannot run, from the
    config.json already in `download_dir`."""
    try:
        check_supported(read_model_config(download_dir))
    except ModelConfigError as error:
        raise NotAModelRepositoryError(f"{reference.repo_id}@{reference.revision}: {error}") from error


@contextmanager
def hub_errors(repo_id: str, revision: str) -> Generator[None]:
    """Turns huggingface_hub's errors into PullError messages naming the repository and revision."""
    where = f"{repo_id}@{revision}"
    try:
        yield
    except GatedRepoError as error:
        raise GatedRepositoryError(f"{repo_id} is gated: accept its terms on the Hub and set HF_TOKEN") from error
    except RepositoryNotFoundError as error:
        raise UnknownRepositoryError(f"repository {repo_id!r} not found (or private: set HF_TOKEN)") from error
    except RevisionNotFoundError as error:
        raise UnknownRevisionError(f"revision {revision!r} not found in {repo_id}") from error
    except OfflineModeIsEnabled as error:
        raise HubOfflineError(f"cannot pull {where}: HF_HUB_OFFLINE is set") from error
    except HfHubHTTPError as error:
        raise PullError(f"the Hub refused {where}: {error}") from error
    except (OSError, httpx2.TransportError) as error:
        # Connection refused, DNS, a file the library gave up resuming: the network, not the model.
        raise HubUnreachableError(f"could not reach the Hub for {where}: {error}") from error
