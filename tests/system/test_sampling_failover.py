"""Penalties survive a failover: streams with logit bias, repetition, presence and frequency penalties
(greedy and seeded) keep their exact text when the shard holding the last layers, where the penalty
history lives, is killed mid-stream. The replayed run samples every replayed step again on the new
last shard, so the history is rebuilt from the prompt and the replayed tokens.

Real processes (coordinator, two shard servers, gateway) over the tiny random-weight llama of
`tests/system/tiny_cluster.py`, and the official openai client.
"""

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI

from tests.system.tiny_cluster import MODEL, Cluster, ready_instance, tiny_cluster

pytestmark = [pytest.mark.process, pytest.mark.model]

MAX_TOKENS = 300
STREAMS: tuple[tuple[str, float, int, dict[str, object]], ...] = (
    ("Hello world! The quick brown fox", 0.0, 0, {"repetition_penalty": 1.3}),
    ("The capital of France is", 0.8, 1234, {"min_p": 0.02, "repetition_penalty": 1.1}),
)
"""(user message, temperature, seed, extension fields) of the concurrent streams."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with tiny_cluster(tmp_path, 2) as started:
        yield started


def stream_text(cluster: Cluster, index: int, progress: list[int]) -> str:
    message, temperature, seed, extensions = STREAMS[index]
    client = OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=150)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        max_tokens=MAX_TOKENS,
        temperature=temperature,
        seed=seed,
        presence_penalty=0.6,
        frequency_penalty=0.4,
        logit_bias={"5": 3, "17": -50},
        extra_body=extensions,
        stream=True,
    )
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            progress[index] += 1
    return text


def run_streams(cluster: Cluster, kill: tuple[list[int], int] | None = None) -> tuple[list[str], list[int]]:
    """Every stream at once; with `kill` (an undisturbed run's chunk counts, a pid), that process is
    killed with SIGKILL once the leading stream is a third of the way through."""
    progress = [0] * len(STREAMS)
    with ThreadPoolExecutor(max_workers=len(STREAMS)) as pool:
        futures = [pool.submit(stream_text, cluster, index, progress) for index in range(len(STREAMS))]
        if kill is not None:
            totals, pid = kill
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and all(
                3 * count < total for count, total in zip(progress, totals, strict=True)
            ):
                time.sleep(0.002)
            assert not any(future.done() for future in futures), f"a stream ended before the kill: {progress}"
            os.kill(pid, signal.SIGKILL)
        texts = [future.result(timeout=240) for future in futures]
    return texts, progress


@pytest.mark.timeout(400)
def test_streams_with_penalties_keep_their_text_when_the_last_shard_dies(cluster: Cluster) -> None:
    instance = ready_instance(cluster, 2, "", 120)
    undisturbed, chunk_counts = run_streams(cluster)
    assert all(undisturbed), "every undisturbed stream produced text"
    client = OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=150)
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": STREAMS[0][0]}], max_tokens=MAX_TOKENS, temperature=0
    )
    assert plain.choices[0].message.content != undisturbed[0], "the penalties changed the greedy text"
    victim = cluster.shards[instance.stages[-1].address]

    disturbed, _ = run_streams(cluster, kill=(chunk_counts, victim.pid))

    assert victim.process.wait(timeout=10) == -signal.SIGKILL
    assert disturbed == undisturbed
    gateway_log = cluster.processes[-1].log_path.read_text(errors="replace")
    assert "recovered after" in gateway_log, f"no stream needed recovery:\n{cluster.logs()}"
