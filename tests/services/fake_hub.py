"""A Hugging Face Hub stand-in: a real HTTP server on 127.0.0.1 serving a folder of repositories.

It answers what huggingface_hub asks for a pull: the model listing (`/api/models/{repo}/revision/{rev}`,
with LFS sha256 for *.safetensors) and `HEAD`/`GET /{repo}/resolve/{rev}/{file}` with the Hub's headers
(`X-Repo-Commit`, `ETag`, `X-Linked-Etag`, `X-Linked-Size`) and Range requests (206). Faults on demand:
a file whose first GET is cut off half way, a file served corrupted under its listed hash (or one byte
flipped), a file whose Range requests are ignored.
"""

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_LISTING = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<revision>[^/]+)")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)")
_RANGE = re.compile(r"bytes=(?P<start>\d+)-(?P<end>\d*)")


GATED_MARKER = ".gated"
"""A repository folder holding this file is gated: every request is refused with 403 `GatedRepo`."""


def commit_of(repo_id: str) -> str:
    """A stable 40-hex commit per repository."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class HubFaults:
    drop_first_get: set[str] = field(default_factory=set[str])
    """File names whose first GET sends half the body, then closes the connection."""
    silent_after_cut: set[str] = field(default_factory=set[str])
    """With `drop_first_get`: every later GET of the file sends its headers and no byte, then closes
    (the library gives up after 5 tries: a pull stopped half way)."""
    corrupted: set[str] = field(default_factory=set[str])
    """File names served with a flipped byte (the listing and ETag keep the true sha256)."""
    ignored_ranges: set[str] = field(default_factory=set[str])
    """File names whose Range header is ignored: the whole file comes back with 200, as from a server
    without range support."""
    flipped_bytes: dict[str, int] = field(default_factory=dict[str, int])
    """File name -> position of a byte served flipped (inside a tensor, say; listing and ETag unchanged)."""
    slow_seconds: float = 0.0
    """Every *.safetensors GET body is sent in 20 pieces over this many seconds (progress can be seen)."""


@dataclass
class FakeHub:
    root: Path
    """`root/OWNER/NAME/<files>`: one folder per repository, at one commit (`commit_of`), branch `main`."""
    url: str = ""
    faults: HubFaults = field(default_factory=HubFaults)
    requests: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    """(method, path) of every request, in order."""
    ranges: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    """(file name, Range header) of every ranged GET."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolved_files(self, method: str = "GET") -> list[str]:
        with self.lock:
            return [path.rsplit("/resolve/", 1)[1].split("/", 1)[1] for verb, path in self.requests
                    if verb == method and "/resolve/" in path]  # fmt: skip

    def body(self, repo_id: str, file_name: str) -> bytes:
        data = (self.root / repo_id / file_name).read_bytes()
        if file_name in self.faults.corrupted:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if (position := self.faults.flipped_bytes.get(file_name)) is not None:
            data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
        return data


def _is_lfs(file_name: str) -> bool:
    return file_name.endswith(".safetensors")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, *, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.requests.append((self.command, path))
            if listing := _LISTING.fullmatch(path):
                self._listing(listing["repo"], listing["revision"])
            elif resolve := _RESOLVE.fullmatch(path):
                self._file(resolve["repo"], resolve["revision"], resolve["file"], send_body=send_body)
            else:
                self._error(404, "EntryNotFound", "no such route")

        def _repository(self, repo_id: str, revision: str) -> Path | None:
            folder = hub.root / repo_id
            if not folder.is_dir():
                # The Hub answers 401 for a repository it does not show (absent or private).
                self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}")
                return None
            if (folder / GATED_MARKER).exists():
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted")
                return None
            if revision not in ("main", commit_of(repo_id)):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return folder

        def _listing(self, repo_id: str, revision: str) -> None:
            folder = self._repository(repo_id, revision)
            if folder is None:
                return
            siblings: list[dict[str, object]] = []
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith("."):
                    continue
                data = entry.read_bytes()
                sibling: dict[str, object] = {"rfilename": entry.name, "size": len(data)}
                if _is_lfs(entry.name):
                    sibling["lfs"] = {"sha256": _sha256(data), "size": len(data), "pointerSize": 134}
                siblings.append(sibling)
            document = {"id": repo_id, "modelId": repo_id, "sha": commit_of(repo_id), "siblings": siblings}
            self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json"}, send_body=True)

        def _file(self, repo_id: str, revision: str, file_name: str, *, send_body: bool) -> None:
            folder = self._repository(repo_id, revision)
            if folder is None:
                return
            if not (folder / file_name).is_file():
                self._error(404, "EntryNotFound", f"{file_name} does not exist")
                return
            true_data = (folder / file_name).read_bytes()
            data = hub.body(repo_id, file_name)
            etag = _sha256(true_data) if _is_lfs(file_name) else hashlib.sha1(true_data).hexdigest()
            headers = {
                "X-Repo-Commit": commit_of(repo_id),
                "ETag": f'"{etag}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            if _is_lfs(file_name):
                headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(true_data))}
            status = 200
            requested = None if file_name in hub.faults.ignored_ranges else self.headers.get("Range")
            if requested and (match := _RANGE.fullmatch(requested)):
                with hub.lock:
                    hub.ranges.append((file_name, requested))
                start = int(match["start"])
                end = int(match["end"]) if match["end"] else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start : end + 1], 206
            if send_body and file_name in hub.faults.drop_first_get:
                hub.faults.drop_first_get.discard(file_name)
                self._send_cut(status, data, headers, len(data) // 2)
                return
            if send_body and file_name in hub.faults.silent_after_cut:
                self._send_cut(status, data, headers, 0)
                return
            if send_body and hub.faults.slow_seconds > 0 and _is_lfs(file_name):
                self._send_slowly(status, data, headers, hub.faults.slow_seconds)
                return
            self._send(status, data, headers, send_body=send_body)

        def _send_slowly(self, status: int, data: bytes, headers: dict[str, str], seconds: float) -> None:
            self.send_response(status)
            for name, value in (headers | {"Content-Length": str(len(data))}).items():
                self.send_header(name, value)
            self.end_headers()
            pieces = 20
            step = max(1, -(-len(data) // pieces))
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
                time.sleep(seconds / pieces)

        def _send_cut(self, status: int, data: bytes, headers: dict[str, str], sent_bytes: int) -> None:
            self.send_response(status)
            for name, value in (headers | {"Content-Length": str(len(data))}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data[:sent_bytes])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                      "Content-Type": "application/json"}, send_body=True)  # fmt: skip

        def _send(self, status: int, data: bytes, headers: dict[str, str], *, send_body: bool) -> None:
            self.send_response(status)
            for name, value in (headers | {"Content-Length": str(len(data))}).items():
                self.send_header(name, value)
            self.end_headers()
            if send_body and self.command != "HEAD":
                self.wfile.write(data)

    return Handler


@contextmanager
def fake_hub(root: Path) -> Generator[FakeHub]:
    """Serves `root` on a free port of 127.0.0.1 until the block ends."""
    hub = FakeHub(root=root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
