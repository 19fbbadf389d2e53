"""A grammar-constrained stream survives a killed shard with the undisturbed text.

Three shard processes over the tiny random-weight llama (tests/system/tiny_cluster.py); two streams
(greedy and seeded) under a JSON schema long enough to outlive the kill. The shard holding the last
layers, where the grammar matcher lives, is killed with `kill -9` mid-stream; the gateway replays
both on the re-placed instance, whose new last shard feeds the journal's tokens to a fresh matcher.
The texts equal those of the undisturbed run, and are valid JSON of the schema.
"""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest
from openai import OpenAI

from tests.system.tiny_cluster import MODEL, Cluster, ready_instance, tiny_cluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

DIGITS_SCHEMA: dict[str, object] = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 9},
    "minItems": 150,
    "maxItems": 150,
}
"""Exactly 150 digits: several hundred tokens, so both streams still run when the shard dies."""
STREAMS = ((0.0, None), (0.9, 4321))
"""(temperature, seed) of the two streams."""
CHUNKS_BEFORE_KILL = 40


def constrained_stream(cluster: Cluster, temperature: float, seed: int | None, progress: list[int], index: int) -> str:
    client = OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=300)
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello world! The quick brown fox"}],
        max_tokens=1500,
        temperature=temperature,
        seed=seed,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "digits", "schema": DIGITS_SCHEMA}},
    )
    text = ""
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            progress[index] += 1
        if chunk.choices and chunk.choices[0].finish_reason is not None:
            assert chunk.choices[0].finish_reason == "stop", text
    return text


def run_streams(cluster: Cluster, started: threading.Event | None = None) -> list[str]:
    """Both streams at once; `started` is set once each has sent `CHUNKS_BEFORE_KILL` chunks."""
    progress = [0] * len(STREAMS)
    with ThreadPoolExecutor(max_workers=len(STREAMS)) as pool:
        futures = [
            pool.submit(constrained_stream, cluster, temperature, seed, progress, index)
            for index, (temperature, seed) in enumerate(STREAMS)
        ]
        if started is not None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and min(progress) < CHUNKS_BEFORE_KILL:
                time.sleep(0.002)
            assert not any(future.done() for future in futures), f"a stream ended before the kill: {progress}"
            started.set()
        return [future.result(timeout=400) for future in futures]


def test_a_constrained_stream_replayed_after_a_killed_last_shard_keeps_its_text(tmp_path: Path) -> None:
    with tiny_cluster(tmp_path, 3) as cluster:
        instance = ready_instance(cluster, 3, "", 120)
        undisturbed = run_streams(cluster)
        for text in undisturbed:
            jsonschema.validate(json.loads(text), DIGITS_SCHEMA)

        victim = cluster.shards[instance.stages[-1].address]  # the last layers: it samples and masks
        started = threading.Event()

        def kill_when_streaming() -> None:
            if started.wait(timeout=180):
                os.kill(victim.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_streaming)
        killer.start()
        disturbed = run_streams(cluster, started)
        killer.join(timeout=10)

        assert victim.process.wait(timeout=10) == -signal.SIGKILL
        assert disturbed == undisturbed
        gateway_log = cluster.processes[-1].log_path.read_text(errors="replace")
        assert "recovered after" in gateway_log, f"no stream needed recovery:\n{cluster.logs()}"
