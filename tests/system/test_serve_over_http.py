"""The gateway's serving routes on a real `strata run` (the embedded SmolLM2 over two shard servers):
the preview document, 401 without a key, unserving mid-stream ends the stream with an OpenAI error
event (not a hang), and serving the model again brings it back."""

import json
import time
from pathlib import Path

import httpx
import pytest

from services.kernel.settings import home_sharing_models
from tests.processes import SESSION_CLUSTER_TOKEN, ServiceProcess, free_port, start_strata, wait_for_http_ok

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

MODEL = "smollm2-135m-instruct"
OK, UNAUTHORIZED = 200, 401


def _wait_for_preview_fit(client: httpx.Client, timeout_seconds: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        document: dict[str, object] = client.get(f"/v1/cluster/models/{MODEL}/preview").json()
        if document["fits"]:
            return document
        time.sleep(0.5)
    raise TimeoutError(f"{MODEL} never fitted again within {timeout_seconds}s")


def test_unserve_mid_stream_and_serve_again_over_http(embedded_home: Path, tmp_path: Path) -> None:
    with home_sharing_models(embedded_home) as home:
        gateway_port, coordinator_port, shard_port = free_port(), free_port(), free_port(consecutive=2)
        arguments = ["run", "--port", str(gateway_port), "--coordinator-port", str(coordinator_port)]
        arguments += ["--shard-port", str(shard_port), "--metrics-port", "0"]
        process: ServiceProcess = start_strata("strata-run", arguments, home, tmp_path / "logs")
        try:
            url = f"http://127.0.0.1:{gateway_port}"
            wait_for_http_ok(process, f"{url}/health", timeout_seconds=240)
            key = {"Authorization": f"Bearer {SESSION_CLUSTER_TOKEN}"}
            with httpx.Client(base_url=url, timeout=60.0) as client:
                # Served on both shard servers: no free one is left for a second copy.
                held = client.get(f"/v1/cluster/models/{MODEL}/preview").json()
                assert set(held) == {"model_id", "fits", "stages", "missing_bytes", "reason"}
                assert held["fits"] is False and held["missing_bytes"] > 0
                assert client.post(f"/v1/cluster/models/{MODEL}/unserve").status_code == UNAUTHORIZED
                refused = client.post(f"/v1/cluster/models/{MODEL}/serve", json={"instances": 2}, headers=key)
                assert refused.status_code == 409 and "bytes are missing" in refused.json()["error"]["message"]

                body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "stream": True}
                events: list[str] = []
                with client.stream("POST", "/v1/completions", json=body) as stream:
                    unserved = False
                    for line in stream.iter_lines():
                        if line.startswith("data: "):
                            events.append(line.removeprefix("data: "))
                        if not unserved and len(events) >= 2:
                            reply = client.post(f"/v1/cluster/models/{MODEL}/unserve", headers=key)
                            assert reply.status_code == OK, reply.text
                            assert MODEL not in reply.json()["served"]
                            unserved = True
                errors = [json.loads(event)["error"] for event in events if event.startswith('{"error"')]
                assert errors and errors[0]["code"] == "model_unserved", events[-3:]

                assert _wait_for_preview_fit(client, 60)["stages"]
                served = client.post(f"/v1/cluster/models/{MODEL}/serve", json={}, headers=key)
                assert served.status_code == OK and served.json()["fits"] is True
                wait_for_http_ok(process, f"{url}/health", timeout_seconds=120)
                completion = client.post(
                    "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4, "temperature": 0}
                )
                assert completion.status_code == OK, completion.text
        except BaseException:
            print(process.log_tail())
            raise
        finally:
            process.stop()
