"""Builds the gateway app over the scripted token source, in memory or behind a real uvicorn server."""

import socket
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.completion_engine import CompletionEngine
from gateway.request_body import DEFAULT_MAX_BODY_BYTES
from gateway.token_source import TokenSource
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, StaticCatalog, StaticTokenizers

SERVER_START_TIMEOUT_SECONDS = 20.0


def build_gateway(
    tokenizer: ModelTokenizer,
    source: TokenSource,
    *,
    ready: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    engine = CompletionEngine(source, StaticTokenizers({MODEL: tokenizer}))
    catalog = StaticCatalog(models=[MODEL], ready={MODEL} if ready else set())
    return create_app(engine, catalog, max_body_bytes=max_body_bytes)


def in_memory_client(app: FastAPI, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30.0)


@contextmanager
def running_server(app: FastAPI) -> Generator[str]:
    """Serves `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL.

    The server is always stopped, and the thread joined, when the block ends.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test gateway server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_SECONDS)
        listener.close()
        if thread.is_alive():
            raise RuntimeError("the test gateway server did not stop")
