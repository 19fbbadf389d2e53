"""The cluster token's resolution and file (pure logic, no processes) and the gateway's API key check."""

import os
import stat
from pathlib import Path

import pytest

from gateway.api_keys import API_KEYS_ENVIRONMENT_VARIABLE, load_api_keys
from services.platform.auth import (
    TOKEN_ENVIRONMENT_VARIABLE,
    ClusterSecurity,
    bearer_matches,
    ensure_cluster_token,
    read_cluster_token,
    token_path,
    write_cluster_token,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.fixture
def no_token_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENVIRONMENT_VARIABLE, raising=False)


@pytest.mark.usefixtures("no_token_environment")
def test_first_service_creates_a_private_token_file_and_later_ones_reuse_it(tmp_path: Path) -> None:
    assert read_cluster_token(tmp_path) is None
    token = ensure_cluster_token(tmp_path)
    assert len(token) >= 40
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600
    assert ensure_cluster_token(tmp_path) == token
    assert [path.name for path in tmp_path.iterdir()] == ["cluster.token"]  # no temporary file left


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cluster_token(tmp_path, "from-file")
    monkeypatch.setenv(TOKEN_ENVIRONMENT_VARIABLE, "from-environment")
    assert read_cluster_token(tmp_path) == "from-environment"
    assert ensure_cluster_token(tmp_path) == "from-environment"


@pytest.mark.usefixtures("no_token_environment")
def test_join_replaces_the_token_with_mode_0600(tmp_path: Path) -> None:
    ensure_cluster_token(tmp_path)
    path = write_cluster_token(tmp_path, "  joined-token\n")
    assert read_cluster_token(tmp_path) == "joined-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="one word"):
        write_cluster_token(tmp_path, "two words")
    with pytest.raises(ValueError, match="one word"):
        write_cluster_token(tmp_path, "\n")


def test_bearer_metadata_must_match_exactly() -> None:
    assert bearer_matches((("authorization", "Bearer secret"),), "secret")
    assert bearer_matches((("other", "x"), ("Authorization", "Bearer secret")), "secret")
    assert not bearer_matches((("authorization", "Bearer secret2"),), "secret")
    assert not bearer_matches((("authorization", "secret"),), "secret")
    assert not bearer_matches((), "secret")
    assert not bearer_matches(None, "secret")


def test_security_never_shows_its_token() -> None:
    assert "secret" not in repr(ClusterSecurity("secret-token-value"))
    assert "secret" not in str(ClusterSecurity("secret-token-value"))


def test_api_keys_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nkey-one\n\n  key-two  \n")
    monkeypatch.setenv(API_KEYS_ENVIRONMENT_VARIABLE, "key-three, key-four")
    assert load_api_keys(key_file) == (b"key-one", b"key-two", b"key-three", b"key-four")
    monkeypatch.delenv(API_KEYS_ENVIRONMENT_VARIABLE)
    assert load_api_keys(None) == ()
    assert os.environ.get(API_KEYS_ENVIRONMENT_VARIABLE) is None
