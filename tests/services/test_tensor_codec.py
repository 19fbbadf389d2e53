"""Tensor codec: bitwise round trips for every wire dtype, and decode's refusals of malformed tensors."""

import mlx.core as mx
import numpy as np
import pytest

from services.platform.tensor_codec import EncodedTensor, TensorDecodeError, decode, dtype_name, encode

pytestmark = pytest.mark.unit

LIMIT = 1 << 20
SHAPES = [(), (0,), (1,), (7,), (2, 3), (1, 5, 4), (2, 0, 3), (0, 0)]

# Each dtype with the unsigned type of the same width, to compare bit patterns (NaN != NaN otherwise).
BIT_VIEWS: dict[str, tuple[mx.Dtype, mx.Dtype, str]] = {
    "float32": (mx.float32, mx.uint32, "<u4"),
    "float16": (mx.float16, mx.uint16, "<u2"),
    "bfloat16": (mx.bfloat16, mx.uint16, "<u2"),
    "int32": (mx.int32, mx.uint32, "<u4"),
    "uint32": (mx.uint32, mx.uint32, "<u4"),
}


def random_bits_array(name: str, shape: tuple[int, ...], seed: int) -> mx.array:
    """Every bit pattern is fair game (NaNs, infinities, subnormals, negative zero)."""
    dtype, bits_dtype, numpy_bits = BIT_VIEWS[name]
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, np.iinfo(numpy_bits).max, size=shape, dtype=numpy_bits, endpoint=True)
    return mx.array(bits).astype(bits_dtype).view(dtype)


def bit_pattern(array: mx.array) -> bytes:
    _, bits_dtype, _ = BIT_VIEWS[dtype_name(array.dtype)]
    return np.asarray(array.view(bits_dtype)).tobytes()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(BIT_VIEWS))
def test_round_trip_is_bitwise(name: str, shape: tuple[int, ...]) -> None:
    original = random_bits_array(name, shape, seed=len(shape) * 31 + sum(shape))

    encoded = encode(original)
    decoded = decode(encoded, max_elements=LIMIT)

    assert encoded.dtype == name
    assert encoded.shape == shape
    assert decoded.dtype == original.dtype
    assert tuple(decoded.shape) == shape
    assert bit_pattern(decoded) == bit_pattern(original)


@pytest.mark.parametrize("name", sorted(BIT_VIEWS))
def test_special_float_values_round_trip(name: str) -> None:
    dtype = BIT_VIEWS[name][0]
    values = [0.0, -0.0, 1.0, -2.5, 65504.0, 1e-7] if name not in {"int32", "uint32"} else [0, 1, 7, 123]
    original = mx.array(values).astype(dtype)
    if name in {"float32", "float16", "bfloat16"}:
        original = mx.concatenate([original, mx.array([float("inf"), float("-inf"), float("nan")]).astype(dtype)])

    decoded = decode(encode(original), max_elements=LIMIT)

    assert bit_pattern(decoded) == bit_pattern(original)


@pytest.mark.parametrize(
    ("name", "patterns"),
    [
        # Signalling and quiet NaNs with payloads, a subnormal, negative zero.
        ("float32", [0x7F800001, 0x7FC00001, 0xFF800123, 0x00000001, 0x80000000]),
        ("float16", [0x7C01, 0x7E01, 0xFC23, 0x0001, 0x8000]),
        ("bfloat16", [0x7F81, 0x7FC1, 0xFF83, 0x0001, 0x8000]),
    ],
)
def test_nan_payloads_and_subnormals_keep_their_bits(name: str, patterns: list[int]) -> None:
    dtype, bits_dtype, _ = BIT_VIEWS[name]
    original = mx.array(patterns, dtype=bits_dtype).view(dtype)

    decoded = decode(encode(original), max_elements=LIMIT)

    assert bit_pattern(decoded) == bit_pattern(original)


def test_encoding_is_raw_little_endian_bytes() -> None:
    # The wire format is documented as raw row-major little-endian elements, nothing else.
    encoded = encode(mx.array([[1, 2], [3, 258]], dtype=mx.int32))

    assert encoded.data == np.array([1, 2, 3, 258], dtype="<i4").tobytes()
    assert encoded.shape == (2, 2)


def test_bfloat16_travels_as_its_16_bit_patterns() -> None:
    encoded = encode(mx.array([1.0, -2.0], dtype=mx.bfloat16))

    assert encoded.data == np.array([0x3F80, 0xC000], dtype="<u2").tobytes()


def test_a_transposed_array_encodes_in_row_major_order() -> None:
    # A non-contiguous view must still go out in its logical order.
    original = mx.reshape(mx.arange(6, dtype=mx.float32), (2, 3)).T

    decoded = decode(encode(original), max_elements=LIMIT)

    assert decoded.tolist() == original.tolist()


def test_decode_accepts_exactly_max_elements() -> None:
    tensor = encode(mx.zeros((4, 4), dtype=mx.float32))

    assert tuple(decode(tensor, max_elements=16).shape) == (4, 4)


def test_encode_refuses_a_dtype_the_wire_does_not_carry() -> None:
    with pytest.raises(TensorDecodeError, match="cannot travel"):
        encode(mx.array([1, 2], dtype=mx.int64))


def test_decode_refuses_an_unknown_dtype() -> None:
    tensor = EncodedTensor(dtype="float64", shape=(1,), data=b"\x00" * 8)

    with pytest.raises(TensorDecodeError, match=r"unknown dtype 'float64'; expected one of \['bfloat16'"):
        decode(tensor, max_elements=LIMIT)


@pytest.mark.parametrize("byte_count", [0, 11, 13, 24])
def test_decode_refuses_the_wrong_byte_count(byte_count: int) -> None:
    tensor = EncodedTensor(dtype="float32", shape=(3,), data=b"\x00" * byte_count)

    expected = rf"{byte_count} bytes for a float32 tensor of shape \(3,\); expected 12"
    with pytest.raises(TensorDecodeError, match=expected):
        decode(tensor, max_elements=LIMIT)


@pytest.mark.parametrize("shape", [(-1,), (2, -3), (-2, -2)])
def test_decode_refuses_negative_dimensions(shape: tuple[int, ...]) -> None:
    # (-2, -2) multiplies to a positive count: the sign check must not rely on the product.
    tensor = EncodedTensor(dtype="float32", shape=shape, data=b"\x00" * 16)

    with pytest.raises(TensorDecodeError, match="negative dimension"):
        decode(tensor, max_elements=LIMIT)


def test_decode_refuses_too_many_elements_before_reading_the_data() -> None:
    # A hostile shape is refused on its size alone, without needing matching data.
    tensor = EncodedTensor(dtype="float32", shape=(1 << 40, 1 << 40), data=b"")

    with pytest.raises(TensorDecodeError, match=f"tensor of {1 << 80} elements exceeds the limit of {LIMIT}"):
        decode(tensor, max_elements=LIMIT)


def test_decode_refuses_one_element_over_the_limit() -> None:
    tensor = encode(mx.zeros((17,), dtype=mx.float16))

    with pytest.raises(TensorDecodeError, match="exceeds the limit of 16"):
        decode(tensor, max_elements=16)


def test_tensor_decode_error_is_a_value_error() -> None:
    assert issubclass(TensorDecodeError, ValueError)
