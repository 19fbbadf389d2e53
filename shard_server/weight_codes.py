"""Linear layers and embeddings that keep their 4- or 8-bit codes and still compute the float32 path exactly.

A model imported quantized (the embedded SmolLM2: 4-bit layers, an 8-bit embedding that is also the
LM head, float16 scales and biases per 32 weights) computes in float32 after MLX dequantizes it to
float16 and widens that. The extension rebuilds those same float32 values from the codes in registers
(`quantized_codes_linear`), so a stage can keep the codes: ~5 bits a weight for 4-bit codes, ~9 for
8-bit, against 32. `stored_codes` takes them from the model as loaded, before it is dequantized;
`codes_twin` builds the compact module for a dequantized one, and `float16_weights` keeps it only
when the load check finds its results bitwise equal.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import mlx.core as mx
from mlx import nn

from shard_server.compact_linear import CompactLinear, Float16LinearLibrary, lookups_equal, same_results

_QUANTIZED_TYPES = (nn.QuantizedLinear, nn.QuantizedEmbedding)


@dataclass(frozen=True)
class StoredCodes:
    """One module's affine codes as MLX holds them: uint32 words, float16 scale and bias per group."""

    codes: mx.array
    scales: mx.array
    biases: mx.array
    group_size: int
    bits: int


def stored_codes(model: nn.Module) -> dict[str, StoredCodes]:
    """The codes of every quantized module the extension reads (affine, 4 or 8 bits, float16 scales)."""
    named = cast(Callable[[], list[tuple[str, nn.Module]]], model.named_modules)()
    found: dict[str, StoredCodes] = {}
    for path, module in named:
        if type(module) not in _QUANTIZED_TYPES or getattr(module, "mode", "affine") != "affine":
            continue
        group_size, bits = cast(int, getattr(module, "group_size")), cast(int, getattr(module, "bits"))  # noqa: B009
        if "biases" not in module or bits not in (4, 8) or group_size % 8 != 0:
            continue
        scales, biases = cast(mx.array, module["scales"]), cast(mx.array, module["biases"])
        if scales.dtype != mx.float16 or biases.dtype != mx.float16:
            continue
        found[path] = StoredCodes(cast(mx.array, module["weight"]), scales, biases, group_size, bits)
    return found


class QuantizedCodesLinear(CompactLinear):
    """`nn.Linear` holding its weights as codes; computes with the float32 values they dequantize to."""

    def __init__(self, library: Float16LinearLibrary, stored: StoredCodes, bias: mx.array | None) -> None:
        super().__init__()
        self._library = library
        self.group_size = stored.group_size
        self.bits = stored.bits
        self.weight = stored.codes  # (out, in * bits / 32) uint32
        self.scales = stored.scales  # (out, in / group_size) float16
        self.biases = stored.biases
        if bias is not None:
            self.bias = bias  # (out,) float32

    def __call__(self, x: mx.array) -> mx.array:
        bias = cast(mx.array, self["bias"]) if "bias" in self else None
        return self._library.quantized_codes_linear(
            x,
            cast(mx.array, self["weight"]),
            cast(mx.array, self["scales"]),
            cast(mx.array, self["biases"]),
            self.group_size,
            self.bits,
            bias,
        )


class QuantizedCodesEmbedding(nn.Module):
    """`nn.Embedding` holding its table as codes: looked-up rows and the tied LM head in float32."""

    def __init__(self, library: Float16LinearLibrary, stored: StoredCodes) -> None:
        super().__init__()
        self._library = library
        self.group_size = stored.group_size
        self.bits = stored.bits
        self.weight = stored.codes
        self.scales = stored.scales
        self.biases = stored.biases

    def _parts(self) -> tuple[mx.array, mx.array, mx.array]:
        return cast(mx.array, self["weight"]), cast(mx.array, self["scales"]), cast(mx.array, self["biases"])

    def __call__(self, x: mx.array) -> mx.array:
        codes, scales, biases = self._parts()
        rows = mx.dequantize(codes[x], scales[x], biases[x], group_size=self.group_size, bits=self.bits)
        return rows.astype(mx.float32)  # MLX's float16 dequantization, widened: the float32 table's rows

    def as_linear(self, x: mx.array) -> mx.array:
        codes, scales, biases = self._parts()
        return self._library.quantized_codes_linear(x, codes, scales, biases, self.group_size, self.bits)


def codes_twin(library: Float16LinearLibrary, module: nn.Module, stored: StoredCodes) -> nn.Module | None:
    """A module holding `stored` in place of the float32 Linear or Embedding it dequantized to, if equal bitwise."""
    weight = cast(mx.array, module["weight"])
    if type(module) is nn.Embedding:
        embedding = QuantizedCodesEmbedding(library, stored)
        as_linear = cast(Callable[[mx.array], mx.array], module.as_linear)
        equal = lookups_equal(module, embedding, weight.shape[0])
        return embedding if equal and same_results(as_linear, embedding.as_linear, weight.shape[1]) else None
    bias = cast(mx.array, module["bias"]) if "bias" in module else None
    if bias is not None and bias.dtype != mx.float32:
        return None
    linear = QuantizedCodesLinear(library, stored, bias)
    return linear if same_results(cast(Callable[[mx.array], mx.array], module), linear, weight.shape[1]) else None
