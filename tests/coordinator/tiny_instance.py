"""The tiny llama the coordinator tests serve through real shard processes: its id, a prompt, and
waiting until the coordinator reports an instance of it ready."""

import time

from strata_wire import coordinator_pb2
from tests.coordinator.replica_processes import get_state
from tests.processes import ServiceProcess

MODEL = "tiny-llama"
PREFILL_STEP_SIZE = 4
PROMPT = [3, 17, 101, 5, 9, 250]
NEW_TOKENS = 8


def wait_for_ready_instance(
    coordinator: str, avoiding: str, timeout_seconds: float, processes: list[ServiceProcess]
) -> coordinator_pb2.ModelInstance:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        state = get_state(coordinator)
        if state is not None:
            for instance in state.instances:
                if instance.status == "ready" and all(stage.shard_id != avoiding for stage in instance.stages):
                    return instance
        time.sleep(0.3)
    logs = "\n".join(f"--- {process.name}\n{process.log_tail(30)}" for process in processes)
    raise TimeoutError(f"no ready instance without {avoiding!r} within {timeout_seconds}s:\n{logs}")
