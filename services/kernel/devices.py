"""The devices a shard computes on, as every service names them."""

from typing import Literal, get_args

DeviceKind = Literal["cpu", "cuda", "metal"]
DEVICE_KINDS: tuple[DeviceKind, ...] = get_args(DeviceKind)
# Peers of earlier versions said "gpu" for an NVIDIA GPU.
_ALIASES: dict[str, DeviceKind] = {"gpu": "cuda"}


def parse_device_kind(text: str) -> DeviceKind | None:
    """The device a peer names, or None when it names none strata knows."""
    for kind in DEVICE_KINDS:
        if text == kind:
            return kind
    return _ALIASES.get(text)
