"""Finding free local ports (tests and benchmarks start services on 127.0.0.1)."""

import socket


def free_port(consecutive: int = 1) -> int:
    """A port on 127.0.0.1 (and the `consecutive - 1` after it) that nothing listens on right now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + consecutive <= 65535 and all(_is_free(first + offset) for offset in range(1, consecutive)):
            return first
    raise RuntimeError("no free range of ports found")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
