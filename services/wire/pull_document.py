"""A `ModelPull` as JSON: the entries of `GET /v1/cluster/pulls`, the same shape as the status document's
`pulls` (services/wire/cluster_status.py: protobuf's JSON mapping, .proto names, 64-bit integers as strings)."""

from typing import cast

from google.protobuf import json_format

from strata_wire import coordinator_pb2


def pull_document(pull: coordinator_pb2.ModelPull) -> dict[str, object]:
    return cast(
        dict[str, object],
        json_format.MessageToDict(pull, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
    )
