"""How a pull is named: Ollama's model names as Hub references, and a revision given apart."""

import pytest
from starlette.exceptions import HTTPException

from gateway.ollama_pull import hub_reference
from gateway.pull_routes import PullBody

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("Org/Name", "Org/Name"),
        ("Org/Name@v2", "Org/Name@v2"),
        ("hf.co/Org/Name", "Org/Name"),
        ("hf.co/Org/Name:latest", "Org/Name"),
        ("huggingface.co/Org/Name:v2", "Org/Name@v2"),
        ("https://huggingface.co/Org/Name", "Org/Name"),
    ],
)
def test_ollama_names(name: str, reference: str) -> None:
    assert hub_reference(name) == reference


def test_a_revision_given_apart() -> None:
    assert PullBody(repository="Org/Name").reference() == "Org/Name"
    assert PullBody(repository="Org/Name", revision="v1").reference() == "Org/Name@v1"
    with pytest.raises(HTTPException, match="revision once"):
        PullBody(repository="Org/Name@v1", revision="v2").reference()
