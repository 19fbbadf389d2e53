"""`strata run --log-format json` with one shard: a completion's `X-Request-Id` is on the gateway's and
the shard's log lines about it, `strata status --json` equals `status_document` of the coordinator's
GetState, and the table names the shard server and the instance's layer range."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from services.kernel.settings import home_sharing_models
from services.wire.cluster_status import status_document
from tests.processes import cluster_state, free_port, start_strata, wait_for_http_ok

pytestmark = [pytest.mark.process, pytest.mark.model]

LOG_WAIT_SECONDS = 30.0


def strata(*arguments: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.app.cli", *arguments, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def lines_with_id(path: Path, request_id: str) -> list[dict[str, Any]]:
    """The JSON lines of `path` carrying `request_id`, once there are (a line is written as it happens)."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        found = [line for line in json_lines(path) if line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_request_ids_in_json_logs_and_strata_status(embedded_home: Path, tmp_path: Path) -> None:
    with home_sharing_models(embedded_home) as home:
        gateway_port, coordinator_port, shard_port = free_port(), free_port(), free_port()
        log_file = tmp_path / "logs" / "run.log"
        arguments = ["run", "--shards", "1", "--port", str(gateway_port), "--coordinator-port", str(coordinator_port)]
        arguments += ["--shard-port", str(shard_port), "--metrics-port", "0"]
        arguments += ["--log-format", "json", "--log-file", str(log_file)]
        process = start_strata("strata-run", arguments, home, tmp_path / "stdout")
        try:
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            wait_for_http_ok(process, f"{gateway_url}/health", timeout_seconds=600)
            client = OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", timeout=300, max_retries=0)

            raw = client.chat.completions.with_raw_response.create(
                model="smollm2-135m-instruct",
                messages=[{"role": "user", "content": "Name a colour."}],
                max_tokens=4,
                temperature=0,
            )
            request_id = raw.headers["X-Request-Id"]
            assert raw.parse().choices[0].message.content
            given = client.chat.completions.with_raw_response.create(
                model="smollm2-135m-instruct",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=1,
                extra_headers={"X-Request-Id": "my-trace-42"},
            )
            assert given.headers["X-Request-Id"] == "my-trace-42"

            gateway_lines = lines_with_id(log_file.with_name("run.gateway.log"), request_id)
            shard_lines = lines_with_id(log_file.with_name("run.shard-1.log"), request_id)
            assert any("POST /v1/chat/completions 200" in line["message"] for line in gateway_lines), gateway_lines
            assert any("prompt tokens" in line["message"] for line in shard_lines), shard_lines
            assert any("finished" in line["message"] for line in shard_lines), shard_lines
            assert lines_with_id(log_file.with_name("run.shard-1.log"), "my-trace-42")
            assert {line["service"] for line in shard_lines} == {"shard"}

            coordinator = f"127.0.0.1:{coordinator_port}"
            printed = strata("status", "--json", "--coordinator", coordinator, home=home)
            assert printed.returncode == 0, printed.stderr
            expected = status_document(cluster_state(coordinator))
            assert json.loads(printed.stdout) == expected  # a settled cluster: nothing moves between the two

            table = strata("status", "--coordinator", coordinator, home=home)
            assert table.returncode == 0, table.stderr
            [shard] = cluster_state(coordinator).shards
            [instance] = cluster_state(coordinator).instances
            [stage] = instance.stages
            assert shard.address in table.stdout and "shard server" in table.stdout
            # The shard measured its device at start: the CPU here, with a speed placement weighs.
            assert shard.device == "cpu" and shard.work_per_second > 0, shard
            assert f"{shard.work_per_second / 1e9:.1f}" in table.stdout
            assert f"{stage.shard_id} [0, {instance.num_layers}) loaded" in table.stdout, table.stdout
        except BaseException:
            print(process.log_tail())
            for path in sorted(log_file.parent.glob("*.log")):
                print(f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
            raise
        finally:
            process.stop()
