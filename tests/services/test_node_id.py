"""node_id(home): one stable id per home, even when the services of a host create it at once."""

import threading
from pathlib import Path

import pytest

from services.kernel.settings import node_id

pytestmark = pytest.mark.unit

CREATORS = 16
ROUNDS = 20


def _create_at_once(home: Path) -> tuple[list[str], list[OSError]]:
    """`CREATORS` threads call node_id(home) together; the ids they got and the errors they met."""
    start = threading.Barrier(CREATORS)
    ids: list[str] = []
    errors: list[OSError] = []

    def create() -> None:
        start.wait(timeout=10)
        try:
            ids.append(node_id(home))
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(CREATORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return ids, errors


def test_services_creating_the_id_at_once_all_get_the_same_one(tmp_path: Path) -> None:
    for round_index in range(ROUNDS):
        home = tmp_path / f"home-{round_index}"

        ids, errors = _create_at_once(home)

        assert not errors
        assert len(ids) == CREATORS and len(set(ids)) == 1
        assert node_id(home) == ids[0]
        assert sorted(path.name for path in home.iterdir()) == ["node-id"]  # no temporary left
