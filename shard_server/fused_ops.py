"""Fewer ops per layer: a llama-form MLP's swiglu and each plain RMSNorm in one native op, bitwise as MLX.

On MLX's CPU wheel each small op of a layer costs a graph node, an allocation and a dispatch; mlx-lm's
compiled `swiglu` (`silu(gate) * up`) also runs MLX's scalar exp, one element at a time. The
extension `native/float16_linear/fused_ops.cpp` (built with the float16 linear layer by `make`)
computes the same arithmetic lane for lane with AVX2 and FMA. `fuse_layer_ops` swaps each module
with `gate_proj`, `up_proj` and `down_proj` for a `FusedMLP` holding the same projections, and keeps
the swap only where the twin's output equals the original's bitwise on random rows (1, 7 and 33);
any other module stays, with one log line per reason. `STRATA_FUSED_OPS=off` keeps MLX's ops.
The same walk swaps each RoPE it can for a checked `FusedRoPE` (fused_rope.py; `STRATA_FUSED_ROPE=off`
keeps MLX's RoPE alone), and, opted in with `STRATA_FUSED_PRODUCTS=on`, puts each MLP's float16 gate and
up in one product where that is bitwise the two (fused_products.py).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import mlx.core as mx
from mlx import nn
from mlx_lm.models.activations import swiglu

from services.platform.mlx_typing import evaluate
from shard_server.compact_linear import same_results
from shard_server.float16_weights import load_extension, set_module, switched_off, switched_on
from shard_server.fused_products import PRODUCTS_SWITCH_VARIABLE, FusedGateUpMLP, GateUpLibrary, joinable
from shard_server.fused_rope import (
    ROPE_SWITCH_VARIABLE,
    FusedRoPE,
    FusedRopeLibrary,
    fused_twin,
    is_rope,
    same_rotations,
)

SWITCH_VARIABLE = "STRATA_FUSED_OPS"
"""`off` (or `0`, `false`, `no`) keeps MLX's ops."""

logger = logging.getLogger(__name__)


class FusedOpsLibrary(Protocol):
    """The extension's fused ops (its C++ checks dtypes and shapes and raises ValueError)."""

    def swiglu(self, gate: mx.array, up: mx.array) -> mx.array: ...

    def rms_norm(self, x: mx.array, weight: mx.array, eps: float) -> mx.array: ...

    def fused_ops_available(self) -> bool: ...


class FusedMLP(nn.Module):
    """A llama-form MLP, `down_proj(silu(gate_proj(x)) * up_proj(x))`, with the swiglu in one native op."""

    def __init__(self, library: FusedOpsLibrary, original: nn.Module) -> None:
        super().__init__()
        self._library = library
        self.gate_proj = cast(nn.Module, original["gate_proj"])
        self.up_proj = cast(nn.Module, original["up_proj"])
        self.down_proj = cast(nn.Module, original["down_proj"])

    def __call__(self, x: mx.array) -> mx.array:
        gate = cast(Callable[[mx.array], mx.array], self.gate_proj)(x)
        up = cast(Callable[[mx.array], mx.array], self.up_proj)(x)
        # The native op is float32 only; other dtypes take mlx-lm's own swiglu.
        both = self._library.swiglu(gate, up) if gate.dtype == up.dtype == mx.float32 else swiglu(gate, up)
        return cast(Callable[[mx.array], mx.array], self.down_proj)(both)


class FusedRMSNorm(nn.Module):
    """`nn.RMSNorm` (MLX's CPU fallback of `mx.fast.rms_norm`: ~7 ops) in one native op."""

    def __init__(self, library: FusedOpsLibrary, original: nn.RMSNorm) -> None:
        super().__init__()
        self._library = library
        self.weight = cast(mx.array, original["weight"])
        self.eps = original.eps

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == self.weight.dtype == mx.float32:
            return self._library.rms_norm(x, self.weight, self.eps)
        return mx.fast.rms_norm(x, self.weight, self.eps)


@dataclass(frozen=True)
class FusedOps:
    """What the load fused: the modules swapped, those kept and why, or why nothing was tried."""

    fused_modules: tuple[str, ...]
    """The MLPs swapped for `FusedMLP`s."""
    kept_modules: tuple[tuple[str, str], ...]
    reason: str
    """Why no module was tried at all (empty when the check ran)."""
    fused_norms: tuple[str, ...] = ()
    """The `nn.RMSNorm`s swapped for `FusedRMSNorm`s."""
    fused_ropes: tuple[str, ...] = ()
    """The RoPEs swapped for `FusedRoPE`s."""
    joined_products: tuple[str, ...] = ()
    """The MLPs (of `fused_modules`) whose gate and up are one product: `FusedGateUpMLP`s."""
    blocks: str = ""
    """What `fused_block.fuse_blocks` did with the llama blocks (empty when it did not run)."""

    def describe(self) -> str:
        if self.reason:
            return f"layer ops through MLX ({self.reason})"
        kept = f", {len(self.kept_modules)} kept on MLX's ops" if self.kept_modules else ""
        joined = f", {len(self.joined_products)} with gate and up in one product" if self.joined_products else ""
        blocks = f"; {self.blocks}" if self.blocks else ""
        return (
            f"{len(self.fused_modules)} MLPs with a fused swiglu and {len(self.fused_norms)} fused RMSNorms"
            f", {len(self.fused_ropes)} fused RoPEs{joined}{kept}{blocks} (checked bitwise)"
        )


def _mlp_input_size(module: nn.Module) -> int | None:
    """The input size of a module with llama-form projections, or None when it has none."""
    if not all(name in module for name in ("gate_proj", "up_proj", "down_proj")):
        return None
    up_proj = cast(nn.Module, module["up_proj"])
    weight = cast(object, up_proj["weight"])
    if not isinstance(weight, mx.array):
        return None
    # Quantized projections (MLX's or strata's codes) pack 32 // bits inputs in each uint32.
    bits = getattr(up_proj, "bits", None)
    return weight.shape[-1] * 32 // bits if isinstance(bits, int) and weight.dtype == mx.uint32 else weight.shape[-1]


def _norm_input_size(module: nn.Module) -> int | None:
    """The size of a plain `nn.RMSNorm` with a float32 weight (gemma's `1 + weight` norms are other classes)."""
    if type(module) is not nn.RMSNorm:
        return None
    weight = cast(object, module["weight"])
    return weight.shape[0] if isinstance(weight, mx.array) and weight.dtype == mx.float32 else None


def _fused_twin(library: FusedOpsLibrary, module: nn.Module, inputs: int) -> tuple[nn.Module | None, str]:
    original = cast(Callable[[mx.array], mx.array], module)
    if hasattr(library, "swiglu_halves") and switched_on(PRODUCTS_SWITCH_VARIABLE) and joinable(module):
        joined = FusedGateUpMLP(cast(GateUpLibrary, library), module)
        if same_results(original, joined, inputs):
            return joined, ""
        logger.warning("an MLP's gate and up in one product differ from two (%s): kept as two", type(module).__name__)
    twin = FusedRMSNorm(library, module) if isinstance(module, nn.RMSNorm) else FusedMLP(library, module)
    equal = same_results(original, twin, inputs)
    return (twin, "") if equal else (None, "its fused output differs from MLX's")


def _rope_twin(library: FusedOpsLibrary, module: nn.Module) -> tuple[FusedRoPE | None, str]:
    if not hasattr(library, "rope"):
        return None, "the fused ops extension has no rope (rebuild it: make)"
    twin = fused_twin(cast(FusedRopeLibrary, library), module)
    if twin is None:
        return None, f"a RoPE form not fused ({type(module).__name__})"
    return (twin, "") if same_rotations(module, twin) else (None, "its fused output differs from MLX's")


def fuse_layer_ops(model: nn.Module, library: FusedOpsLibrary | None = None) -> FusedOps:
    """Swaps the model's llama-form MLPs, RMSNorms and RoPEs for checked fused twins (in place); `library`
    defaults to `make`'s."""
    if switched_off(variable=SWITCH_VARIABLE):
        return FusedOps((), (), f"{SWITCH_VARIABLE}=off")
    if library is None:
        library = cast(FusedOpsLibrary | None, load_extension())
        if library is None or not hasattr(library, "swiglu"):
            return FusedOps((), (), "the fused ops extension is not built")
    if not library.fused_ops_available():
        return FusedOps((), (), "this CPU lacks AVX2 or FMA")
    fused: list[str] = []
    norms: list[str] = []
    ropes: list[str] = []
    joined: list[str] = []
    kept: list[tuple[str, str]] = []
    ropes_off = switched_off(variable=ROPE_SWITCH_VARIABLE)
    named = cast(Callable[[], list[tuple[str, nn.Module]]], model.named_modules)()
    for path, module in named:
        if isinstance(module, FusedMLP | FusedGateUpMLP | FusedRMSNorm | FusedRoPE):
            continue
        if is_rope(module):
            if ropes_off:
                continue
            rope, reason = _rope_twin(library, module)
            if rope is None:
                kept.append((path, reason))
            else:
                set_module(model, path, rope)
                ropes.append(path)
            continue
        inputs = _mlp_input_size(module) or _norm_input_size(module)
        if inputs is None:
            continue
        twin, reason = _fused_twin(library, module, inputs)
        if twin is None:
            kept.append((path, reason))
            continue
        set_module(model, path, twin)
        (norms if isinstance(twin, FusedRMSNorm) else fused).append(path)
        if isinstance(twin, FusedGateUpMLP):
            joined.append(path)
    evaluate(model.parameters())
    for reason in sorted({reason for _, reason in kept}):
        paths = [path for path, why in kept if why == reason]
        logger.warning("%d modules keep MLX's ops (%s), e.g. %s", len(paths), reason, paths[0])
    return FusedOps(tuple(fused), tuple(kept), "", tuple(norms), tuple(ropes), tuple(joined))
