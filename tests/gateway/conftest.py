"""Shared fixtures: a real tiny tokenizer directory, and the anyio backend for async tests."""

from pathlib import Path

import pytest

from gateway.tokenization import ModelTokenizer
from tests.gateway.tiny_tokenizer import build_model_directory


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def model_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_directory(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def model_tokenizer(model_directory: Path) -> ModelTokenizer:
    return ModelTokenizer.from_directory(model_directory)
