"""The cluster's status as one JSON document: what `strata status --json` prints and `GET /v1/cluster` serves.

Both read a coordinator's `GetState` reply and convert it only here, so the two can never disagree on
a field's name or shape. The shape is protobuf's canonical JSON mapping of `ClusterState` with the
.proto's field names and every field present (zeros and empty lists included); as in that mapping,
64-bit integers are strings.
"""

from typing import cast

from google.protobuf import json_format

from strata_wire import coordinator_pb2

STATUS_DOCUMENT_VERSION = 1


def status_document(state: coordinator_pb2.ClusterState) -> dict[str, object]:
    """`state` as a JSON-ready dict with a `version` key (bumped when a field changes meaning)."""
    fields = cast(
        dict[str, object],
        json_format.MessageToDict(state, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
    )
    return {"version": STATUS_DOCUMENT_VERSION, **fields}
