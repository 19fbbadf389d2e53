"""A shard server dies under open streams: `kill -9` one of three while 4 streams run through the real
gateway and the openai client (2 greedy, 2 seeded). Every stream pauses, then completes, with the
text of the same request on the undisturbed cluster; for the shard holding the first, middle or last
layers. And when no instance can come back within the recovery deadline, the stream ends with a clear
error chunk instead of hanging.

Real processes (coordinator, three shard servers, gateway) over a tiny random-weight llama with a
small real tokenizer; the coordinator waits for all three shards (`--min-shards 3`) so each holds
layers, and re-places the instance on the two survivors once the killed shard's lease expires.
"""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from gateway.tokenization import ModelTokenizer
from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from tests.system.tiny_cluster import (
    MAX_TOKENS,
    MODEL,
    REQUESTS,
    TOKENS_BEFORE_KILL,
    Cluster,
    ready_instance,
    run_all,
    run_all_killing,
    tiny_cluster,
)

pytestmark = [pytest.mark.process, pytest.mark.model]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    deadline_seconds = getattr(request, "param", None)
    if deadline_seconds is not None:
        monkeypatch.setenv("STRATA_RECOVERY_DEADLINE_SECONDS", str(deadline_seconds))
    with tiny_cluster(tmp_path, 3) as started:
        yield started


@pytest.mark.timeout(300)
@pytest.mark.parametrize("victim_stage", [0, 1, 2], ids=["first-layers", "middle-layers", "last-layers"])
def test_streams_survive_a_killed_shard_with_the_undisturbed_text(cluster: Cluster, victim_stage: int) -> None:
    instance = ready_instance(cluster, 3, "", 120)
    undisturbed, chunk_counts = run_all(cluster)
    assert all(undisturbed), "every undisturbed stream produced text"

    disturbed = run_all_killing(cluster, cluster.shards[instance.stages[victim_stage].address], chunk_counts)

    assert disturbed == undisturbed
    replaced = ready_instance(cluster, 2, instance.instance_id, 5)
    assert {stage.address for stage in replaced.stages} == set(cluster.shards) - {instance.stages[victim_stage].address}
    gateway_log = cluster.processes[-1].log_path.read_text(errors="replace")
    assert "recovered after" in gateway_log, f"no stream needed recovery:\n{cluster.logs()}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [2.0], indirect=True, ids=["recovery-deadline-2s"])
def test_a_stream_that_cannot_recover_in_time_ends_with_a_clear_error_chunk(cluster: Cluster, tmp_path: Path) -> None:
    instance = ready_instance(cluster, 3, "", 120)
    client = OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=60)
    # The tiny model may end its answer within a few tokens, before the kill below lands: with its
    # end-of-sequence tokens banned the stream runs to MAX_TOKENS, long after the kill.
    model_dir = ModelStore(models_root(tmp_path / "home")).model_dir(ModelId(MODEL))
    no_end = {str(token): -100 for token in ModelTokenizer.from_directory(model_dir).stop_token_ids}
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": REQUESTS[0][0]}],
        max_tokens=MAX_TOKENS,
        logit_bias=no_end,
        stream=True,
    )
    received = 0
    started = time.monotonic()
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == TOKENS_BEFORE_KILL:
                    # The lease outlives the 2 s deadline: no instance can be ready again in time.
                    os.kill(cluster.shards[instance.stages[1].address].pid, signal.SIGKILL)
    assert received >= TOKENS_BEFORE_KILL
    assert time.monotonic() - started < 30, "the stream ended soon after the deadline, it did not hang"
    message = str(raised.value)
    assert "could not be recovered" in message and "recovery deadline" in message, message
