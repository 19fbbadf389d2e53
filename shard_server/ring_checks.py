"""Checks of a ring message against the receiving stage, made when it arrives (before the worker).

A malformed batch is refused on its own stream with a clear reason (the sender fails the request),
instead of failing later inside the worker. Checks that need a request's state (unknown request,
position) stay with the worker, which fails the request round the ring.
"""

from shard_server.ring_messages import BatchStep, RingMessage
from shard_server.wire import WireError

HIDDEN_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
"""Dtypes hidden states travel in, and their element sizes."""


def check_ring_message(message: RingMessage, hidden_size: int) -> None:
    """Raises `WireError` for a batch this stage cannot take; `hidden_size` 0: no model loaded yet."""
    if not isinstance(message, BatchStep):
        return
    hidden = message.hidden
    itemsize = HIDDEN_DTYPE_BYTES.get(hidden.dtype)
    if itemsize is None:
        raise WireError(f"hidden states of dtype {hidden.dtype!r}; expected one of {sorted(HIDDEN_DTYPE_BYTES)}")
    rows = sum(segment.length for segment in message.segments)
    if hidden_size and hidden.shape != (1, rows, hidden_size):
        raise WireError(f"hidden states of shape {hidden.shape}; expected (1, {rows}, {hidden_size}) for {rows} rows")
    elements = 1
    for size in hidden.shape:
        elements *= max(size, 0)
    if len(hidden.data) != elements * itemsize:
        raise WireError(f"{len(hidden.data)} bytes of hidden states; shape {hidden.shape} needs {elements * itemsize}")
