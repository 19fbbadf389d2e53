"""The embeddings route's pure parts: normalization and OpenAI's two encodings."""

import base64

import numpy as np
import pytest

from gateway.embeddings import encode_vector, normalized

pytestmark = pytest.mark.unit


def test_a_vector_is_scaled_to_unit_length_and_zero_stays_zero() -> None:
    vector = np.array([3.0, 4.0], dtype="<f4").tobytes()
    assert np.frombuffer(normalized(vector), dtype="<f4").tolist() == [0.6000000238418579, 0.800000011920929]
    zero = np.zeros(3, dtype="<f4").tobytes()
    assert normalized(zero) == zero


def test_float_and_base64_carry_the_same_float32_values() -> None:
    vector = np.array([0.1, -2.5, 1e-8], dtype="<f4").tobytes()
    as_floats = encode_vector(vector, "float")
    assert isinstance(as_floats, list)
    assert np.array(as_floats, dtype=np.float32).tobytes() == vector
    as_text = encode_vector(vector, "base64")
    assert isinstance(as_text, str) and base64.b64decode(as_text) == vector
