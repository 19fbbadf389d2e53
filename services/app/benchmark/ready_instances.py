"""`python -m services.app.benchmark.ready_instances HOST:PORT`: prints how many model instances are ready.

The scale-out run waits on it (inside the control host's namespace) before it measures, so a
second instance still loading never counts against a run.
"""

import sys

import grpc

from services.app.operator_commands import fetch_status


def ready_instance_count(coordinator: str) -> int:
    """0 while the coordinator does not answer (none is known to be ready)."""
    try:
        state = fetch_status(coordinator)
    except grpc.RpcError:
        return 0
    return sum(1 for instance in state.instances if instance.status == "ready")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m services.app.benchmark.ready_instances HOST:PORT", file=sys.stderr)
        return 2
    print(ready_instance_count(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
