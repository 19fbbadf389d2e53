"""Before `strata models pull` fetches a weight: does the model fit the cluster's memory at all?

The pull reads the config and every safetensors header first (a few KiB per file); this asks the
coordinator's `PreviewServing` with those (`pulled_candidate`), which previews the placement over every
shard server that is not draining, as if none served anything. A model that does not fit is refused
with the bytes it lacks, unless `--force`. No coordinator answering is not a refusal: the pull goes
on, saying it could not check (pulling onto a host before its cluster exists is normal).
"""

import json
import sys
from collections.abc import Mapping

import grpc

from services.kernel.ids import ModelId
from services.models.hub_pull import SizeCheck
from services.models.lazy_pull import TensorPlace
from services.models.model_config import ModelConfig
from services.models.pull_errors import PullError
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc, model_transfer_pb2

CHECK_TIMEOUT_SECONDS = 10.0


class ModelTooLargeError(PullError):
    """The cluster lacks the memory for the model (the message says how much); `--force` pulls anyway."""


def pulled_candidate_to_pb(
    config: ModelConfig, places: Mapping[str, Mapping[str, TensorPlace]]
) -> model_transfer_pb2.PulledModelCandidate:
    tensors = [
        model_transfer_pb2.PulledModelTensor(
            name=key, dtype=place.dtype, shape=list(place.shape), stored_bytes=place.end - place.start
        )
        for file_places in places.values()
        for key, place in sorted(file_places.items())
    ]
    return model_transfer_pb2.PulledModelCandidate(config_json=json.dumps(config.as_dict()), tensors=tensors)


def describe_shortfall(preview: coordinator_pb2.ServingPreview) -> str:
    return (
        f"{preview.model_id} does not fit the cluster's memory: {preview.missing_bytes} bytes "
        f"({preview.missing_bytes / 2**30:.2f} GiB) missing ({preview.reason})"
    )


def cluster_fit_check(coordinator: str, model_id: ModelId, *, force: bool) -> SizeCheck:
    """A `pull_model` size check against the cluster at `coordinator`; raises ModelTooLargeError."""

    def check(config: ModelConfig, places: Mapping[str, Mapping[str, TensorPlace]]) -> None:
        request = coordinator_pb2.PreviewServingRequest(
            model_id=model_id, instances=1, pulled_candidate=pulled_candidate_to_pb(config, places)
        )
        try:
            with cluster_sync_channel(coordinator) as channel:
                stub = coordinator_pb2_grpc.CoordinatorStub(channel)
                preview = stub.PreviewServing(request, timeout=CHECK_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "error"
            print(
                f"strata models pull: could not ask the coordinator at {coordinator} whether {model_id} fits "
                f"({code}); pulling without that check",
                file=sys.stderr,
            )
            return
        if preview.fits:
            stages = len(preview.stages)
            print(f"{model_id} fits the cluster at {coordinator} ({stages} stages)", file=sys.stderr)
            return
        if not force:
            raise ModelTooLargeError(f"{describe_shortfall(preview)}; --force pulls it anyway")
        print(f"strata models pull: {describe_shortfall(preview)}; pulling anyway (--force)", file=sys.stderr)

    return check
