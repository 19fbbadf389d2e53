"""`ModelPull` (coordinator/model_pulls.py) as the wire's `ModelPull`, and `PullModelRequest` decoded."""

from coordinator.model_pulls import ModelPull
from services.kernel.status_errors import InvalidArgumentError
from strata_wire import coordinator_pb2

MAX_REFERENCE_LENGTH = 300


def pull_to_pb(pull: ModelPull) -> coordinator_pb2.ModelPull:
    return coordinator_pb2.ModelPull(
        pull_id=pull.pull_id,
        repository=pull.repository,
        revision=pull.revision,
        model_id=pull.model_id,
        state=pull.state,
        bytes_done=pull.bytes_done,
        bytes_total=pull.bytes_total,
        bytes_per_second=pull.bytes_per_second,
        eta_seconds=-1.0 if pull.eta_seconds is None else pull.eta_seconds,
        error=pull.error,
        node_id=pull.node_id,
        files=[
            coordinator_pb2.PulledFile(
                name=file.name, sha256=file.sha256 or "", bytes_done=file.bytes_done, bytes_total=file.bytes_total
            )
            for file in pull.files
        ],
        started_at=pull.started_at,
    )


def pull_request_from_pb(request: coordinator_pb2.PullModelRequest) -> tuple[str, str, bool]:
    """(repository, model id text, replace); the references themselves are checked by the pull."""
    if not request.repository:
        raise InvalidArgumentError("repository is required (OWNER/NAME or OWNER/NAME@REVISION)")
    if len(request.repository) > MAX_REFERENCE_LENGTH or len(request.model_id) > MAX_REFERENCE_LENGTH:
        raise InvalidArgumentError(f"repository and model_id are at most {MAX_REFERENCE_LENGTH} characters")
    return request.repository, request.model_id, request.replace
