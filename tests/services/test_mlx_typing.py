"""The typed doors into MLX: list conversions check what they return."""

import mlx.core as mx
import pytest

from services.platform.mlx_typing import to_bool_list, to_int_list

pytestmark = pytest.mark.unit


def test_lists_of_one_dimensional_arrays() -> None:
    assert to_int_list(mx.array([3, 0, 7])) == [3, 0, 7]
    assert to_bool_list(mx.array([True, False])) == [True, False]


@pytest.mark.parametrize("array", [mx.array([[1, 2], [3, 4]]), mx.array([1.5, 2.0]), mx.array(4)])
def test_an_array_of_another_shape_or_kind_is_refused(array: mx.array) -> None:
    with pytest.raises(TypeError, match="one-dimensional array of int"):
        to_int_list(array)


def test_integers_are_not_booleans() -> None:
    with pytest.raises(TypeError, match="one-dimensional array of bool"):
        to_bool_list(mx.array([1, 0]))
