"""What the fused ops' tests share: the extension holding an op, or a skip saying why (a failure under
CI=true, where every test must run), and the bit patterns of float32 arrays."""

import os
from typing import NoReturn, cast

import mlx.core as mx
import numpy as np
import pytest

from shard_server.float16_weights import load_extension
from shard_server.fused_ops import FusedOpsLibrary


def skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


def require_fused_op(name: str) -> object:
    """The built extension, where it has the op `name` and this CPU runs the fused ops."""
    library = cast(FusedOpsLibrary | None, load_extension())
    if library is None or not hasattr(library, name):
        skip_or_fail(f"the fused ops extension is not built with {name} (make builds it)")
    if not library.fused_ops_available():
        skip_or_fail("this CPU lacks AVX2 or FMA")
    return library


def float_bits(values: mx.array) -> np.ndarray:
    return np.array(values).view(np.uint32)
