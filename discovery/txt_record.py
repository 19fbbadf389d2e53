"""`PeerInfo` to and from mDNS TXT properties (short keys: a TXT record is limited to a few hundred bytes
per entry and the whole record should stay under one packet)."""

import math
from collections.abc import Mapping

from pydantic import ValidationError

from discovery.peer import PeerInfo, parse_role
from services.kernel.ids import NodeId

MODELS_SEPARATOR = ","


class TxtRecordError(ValueError):
    """The properties do not describe a strata peer."""


def to_properties(peer: PeerInfo) -> dict[str, str]:
    properties = {
        "cluster": peer.cluster,
        "role": peer.role,
        "node": peer.node_id,
        "version": str(peer.protocol_version),
    }
    if peer.role == "shard":
        properties |= {
            "mem_total": str(peer.total_memory_bytes),
            "mem_available": str(peer.available_memory_bytes),
            "device": peer.device,
            "speed": repr(peer.work_per_second),
        }
    if peer.models:
        properties["models"] = MODELS_SEPARATOR.join(peer.models)
    return properties


def _text(properties: Mapping[bytes, bytes | None], key: str, default: str | None = None) -> str:
    value = properties.get(key.encode())
    if value is None:
        if default is None:
            raise TxtRecordError(f"TXT property {key!r} is missing")
        return default
    try:
        return value.decode()
    except UnicodeDecodeError as error:
        raise TxtRecordError(f"TXT property {key!r} is not UTF-8") from error


def _integer(properties: Mapping[bytes, bytes | None], key: str, default: str | None = None) -> int:
    text = _text(properties, key, default)
    if not text.isdigit():
        raise TxtRecordError(f"TXT property {key!r} is not a non-negative integer: {text!r}")
    return int(text)


def _number(properties: Mapping[bytes, bytes | None], key: str, default: str) -> float:
    text = _text(properties, key, default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise TxtRecordError(f"TXT property {key!r} is not a non-negative number: {text!r}")
    return value


def from_properties(properties: Mapping[bytes, bytes | None], address: str) -> PeerInfo:
    """The peer announced with these TXT properties at `address`; raises TxtRecordError if malformed."""
    models_text = _text(properties, "models", "")
    try:
        return PeerInfo(
            cluster=_text(properties, "cluster"),
            role=parse_role(_text(properties, "role")),
            node_id=NodeId(_text(properties, "node")),
            protocol_version=_integer(properties, "version"),
            address=address,
            total_memory_bytes=_integer(properties, "mem_total", "0"),
            available_memory_bytes=_integer(properties, "mem_available", "0"),
            device=_text(properties, "device", ""),
            work_per_second=_number(properties, "speed", "0"),
            models=tuple(model for model in models_text.split(MODELS_SEPARATOR) if model),
        )
    except (ValidationError, ValueError) as error:
        raise TxtRecordError(str(error)) from error
