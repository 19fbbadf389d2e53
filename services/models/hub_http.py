"""Reading Hub files over HTTP ourselves: from an offset on (resumable), or one byte range.

huggingface_hub's `hf_hub_download` keeps a partial file only for the process that wrote it and has no
range reads; both are needed here (a pull resumed by the next run, a shard reading only its tensors).
The library still provides what makes a request a Hub request: its shared HTTP client (redirects to
the CDN followed), the headers with HF_TOKEN or the saved token, the file URL under HF_ENDPOINT, the
download timeout, and its HTTP errors (`hf_raise_for_status`).
"""

import importlib
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Protocol, cast

import httpx2
from huggingface_hub import constants, hf_hub_url
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import get_session, hf_raise_for_status
from huggingface_hub.utils import tqdm as hub_tqdm

TRIES_WITHOUT_PROGRESS = 5
"""As huggingface_hub: a transfer gives up after this many tries in a row that brought no byte."""


class HubTransferError(OSError):
    """The connection kept failing (or the server does not do ranges): the network, not the model."""


class _CutShortError(Exception):
    """The body ended before the bytes asked for (a dropped connection the client saw as an end)."""


class _BuildHeaders(Protocol):
    def __call__(self, *, token: str | None) -> dict[str, str]: ...


# Its signature carries an untyped `user_agent: dict`; the one call strata makes, typed.
_build_hf_headers = cast(_BuildHeaders, importlib.import_module("huggingface_hub.utils").build_hf_headers)


def file_url(repo_id: str, file_name: str, commit: str, endpoint: str | None) -> str:
    return hf_hub_url(repo_id, file_name, revision=commit, endpoint=endpoint)


@contextmanager
def _get(url: str, token: str | None, byte_range: str | None) -> Generator[httpx2.Response]:
    if constants.HF_HUB_OFFLINE:
        raise OfflineModeIsEnabled(f"HF_HUB_OFFLINE is set: not reading {url}")
    headers = _build_hf_headers(token=token)
    if byte_range is not None:
        headers["Range"] = byte_range
    with get_session().stream("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
        hf_raise_for_status(response)
        yield response


def stream_from(
    url: str, offset: int, size: int, consume: Callable[[bytes], None], *, token: str | None = None
) -> None:
    """Hands every byte of the file from `offset` to `size` to `consume`, in order, exactly once.

    A dropped connection is resumed at the next byte (a Range request); after `TRIES_WITHOUT_PROGRESS`
    tries in a row that bring nothing, raises HubTransferError. HTTP refusals raise huggingface_hub's
    errors (HfHubHTTPError and its kinds).
    """
    failures = 0
    while offset < size:
        before = offset
        try:
            with _get(url, token, f"bytes={offset}-" if offset > 0 else None) as response:
                resumed_at = response.headers.get("Content-Range", "")
                if offset > 0 and (response.status_code != 206 or not resumed_at.startswith(f"bytes {offset}-")):
                    raise HubTransferError(
                        f"{url} answered {response.status_code} ({resumed_at!r}) to a request from byte {offset}"
                    )
                for received in response.iter_bytes():  # as they arrive: a cut keeps what came
                    chunk = received[: size - offset]  # never past the size the listing gave
                    consume(chunk)
                    offset += len(chunk)
            if offset < size:
                raise _CutShortError(f"{url} ended after {offset} of {size} bytes")
        except (httpx2.TransportError, _CutShortError) as error:
            failures = 0 if offset > before else failures + 1
            if failures >= TRIES_WITHOUT_PROGRESS:
                raise HubTransferError(
                    f"{url}: {TRIES_WITHOUT_PROGRESS} tries in a row brought no byte "
                    f"({offset} of {size} received): {error}"
                ) from error


def read_range(url: str, start: int, end: int, consume: Callable[[bytes], None], *, token: str | None = None) -> None:
    """Hands bytes `[start, end)` of the file to `consume`, in order, by HTTP range reads only.

    A server that answers with anything but exactly that range (a 200 with the whole file, say) is
    refused with HubTransferError before its body is read: a shard never downloads a whole file.
    A dropped connection is resumed from the next byte, as `stream_from`.
    """
    position, failures = start, 0
    while position < end:
        before = position
        try:
            with _get(url, token, f"bytes={position}-{end - 1}") as response:
                expected = f"bytes {position}-{end - 1}/"
                if response.status_code != 206 or not response.headers.get("Content-Range", "").startswith(expected):
                    raise HubTransferError(
                        f"{url} did not answer the range {position}-{end - 1} "
                        f"(status {response.status_code}, Content-Range {response.headers.get('Content-Range')!r})"
                    )
                for received in response.iter_bytes():  # as they arrive: a cut keeps what came
                    chunk = received[: end - position]
                    consume(chunk)
                    position += len(chunk)
            if position < end:
                raise _CutShortError(f"{url} ended the range at {position} of {start}-{end - 1}")
        except (httpx2.TransportError, _CutShortError) as error:
            failures = 0 if position > before else failures + 1
            if failures >= TRIES_WITHOUT_PROGRESS:
                raise HubTransferError(f"{url}: {TRIES_WITHOUT_PROGRESS} tries brought no byte: {error}") from error


class Progress(Protocol):
    def update(self, n: float | None = 1) -> bool | None: ...


@contextmanager
def progress_bar(name: str, size: int, done: int) -> Generator[Progress]:
    """huggingface_hub's progress bar (bytes, speed, ETA; off with HF_HUB_DISABLE_PROGRESS_BARS=1)."""
    with hub_tqdm(total=size, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar:
        yield cast(Progress, bar)
