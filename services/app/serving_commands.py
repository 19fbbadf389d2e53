"""`strata models serve|unserve|preview`: serving models at run time, over the coordinator's RPCs.

Exit statuses: 0 done (preview: it fits), 1 unknown model or another refusal, 3 it does not fit,
4 the coordinator is unreachable. `render_preview` is pure formatting, tested without a cluster.
"""

import json
import sys

import grpc

from services.platform.grpc_server import cluster_sync_channel
from services.wire.serving_preview import preview_document
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

CALL_TIMEOUT_SECONDS = 60.0
"""Serving reads the model's spec from the coordinator's store and commits through the log."""
EXIT_REFUSED = 1
EXIT_DOES_NOT_FIT = 3
EXIT_UNREACHABLE = 4


def render_preview(preview: coordinator_pb2.ServingPreview) -> str:
    if not preview.fits:
        return f"{preview.model_id} does not fit: {preview.missing_bytes} bytes missing\n{preview.reason}"
    header = ("NODE", "SHARD", "LAYERS", "MEMORY MiB")
    rows = [
        (
            stage.node_id,
            stage.shard_id,
            f"[{stage.start_layer}, {stage.end_layer})",
            f"{stage.memory_bytes / 2**20:.1f}",
        )
        for stage in preview.stages
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join([f"{preview.model_id} fits:", *table])


def _failed(command: str, coordinator: str, error: grpc.RpcError) -> int:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        print(f"strata models {command}: coordinator {coordinator} unreachable: {details}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"strata models {command}: {details}", file=sys.stderr)
    return EXIT_DOES_NOT_FIT if code == grpc.StatusCode.RESOURCE_EXHAUSTED else EXIT_REFUSED


def serve_model(coordinator: str, model_id: str, instances: int, as_json: bool) -> int:
    request = coordinator_pb2.ServeModelRequest(model_id=model_id, instances=instances)
    with cluster_sync_channel(coordinator) as channel:
        try:
            preview = coordinator_pb2_grpc.CoordinatorStub(channel).ServeModel(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            return _failed("serve", coordinator, error)
    if as_json:
        print(json.dumps(preview_document(preview)))
    else:
        print(f"serving {model_id} ({instances} instances); placing it now, see `strata status`")
        if preview.stages:
            print(render_preview(preview))
    return 0


def unserve_model(coordinator: str, model_id: str, as_json: bool) -> int:
    request = coordinator_pb2.UnserveModelRequest(model_id=model_id)
    with cluster_sync_channel(coordinator) as channel:
        try:
            reply = coordinator_pb2_grpc.CoordinatorStub(channel).UnserveModel(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            return _failed("unserve", coordinator, error)
    if as_json:
        print(json.dumps({"model_id": model_id, "served": list(reply.model_ids)}))
    else:
        print(f"{model_id} is no longer served; still served: {', '.join(reply.model_ids) or '(none)'}")
    return 0


def preview_model(coordinator: str, model_id: str, instances: int, as_json: bool) -> int:
    request = coordinator_pb2.PreviewServingRequest(model_id=model_id, instances=instances)
    with cluster_sync_channel(coordinator) as channel:
        try:
            preview = coordinator_pb2_grpc.CoordinatorStub(channel).PreviewServing(
                request, timeout=CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            return _failed("preview", coordinator, error)
    print(json.dumps(preview_document(preview)) if as_json else render_preview(preview))
    return 0 if preview.fits else EXIT_DOES_NOT_FIT
