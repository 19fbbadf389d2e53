"""The JSON document of a coordinator's `ServingPreview`: what `strata models preview --json` prints and
the gateway's `/v1/cluster/models/{id}/preview` and `/serve` routes answer."""

from strata_wire import coordinator_pb2


def preview_document(preview: coordinator_pb2.ServingPreview) -> dict[str, object]:
    """The preview as the gateway's HTTP routes and `--json` give it."""
    return {
        "model_id": preview.model_id,
        "fits": preview.fits,
        "stages": [
            {
                "node_id": stage.node_id,
                "shard_id": stage.shard_id,
                "start_layer": stage.start_layer,
                "end_layer": stage.end_layer,
                "memory_bytes": stage.memory_bytes,
            }
            for stage in preview.stages
        ],
        "missing_bytes": preview.missing_bytes,
        "reason": preview.reason or None,
    }
