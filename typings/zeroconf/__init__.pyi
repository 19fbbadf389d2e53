"""Minimal stubs for the parts of python-zeroconf strata uses (its own hints leave Awaitable untyped)."""

import enum
from collections.abc import Sequence

class IPVersion(enum.Enum):
    V4Only = 1
    V6Only = 2
    All = 3

class InterfaceChoice(enum.Enum):
    Default = 1
    All = 2

class Zeroconf:
    done: bool

class ServiceListener:
    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None: ...
    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None: ...
    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None: ...

class ServiceInfo:
    name: str
    port: int | None
    def __init__(
        self,
        type_: str,
        name: str,
        port: int | None = None,
        weight: int = 0,
        priority: int = 0,
        properties: bytes | dict[str, str] | dict[bytes, bytes | None] | None = None,
        server: str | None = None,
        host_ttl: int = ...,
        other_ttl: int = ...,
        *,
        addresses: Sequence[bytes | str] | None = None,
        parsed_addresses: list[str] | None = None,
        interface_index: int | None = None,
    ) -> None: ...
    @property
    def properties(self) -> dict[bytes, bytes | None]: ...
    def parsed_addresses(self, version: IPVersion = ...) -> list[str]: ...
