"""The embedded SmolLM2 as the store holds it parses to the config the unit tests pin down."""

from pathlib import Path

import pytest

from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_config import parse_model_config, read_model_config
from tests.services.test_model_config import SMOLLM2_CONFIG, SOURCE

pytestmark = pytest.mark.model


def test_the_stored_smollm2_matches_the_embedded_config(embedded_models: Path) -> None:
    stored = read_model_config(embedded_models / EMBEDDED_MODEL_ID)
    expected = parse_model_config(SMOLLM2_CONFIG, SOURCE)
    assert stored.model_dump(exclude={"source", "raw"}) == expected.model_dump(exclude={"source", "raw"})
