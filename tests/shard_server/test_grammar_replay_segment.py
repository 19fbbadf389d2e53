"""The first shard sends a recovering request's journal to the last shard's grammar, on its first step only."""

import queue
from pathlib import Path

import pytest

from services.kernel.ids import InstanceId, RequestId
from services.kernel.sampling import SamplingOptions
from shard_server.model_stage import StageRange
from shard_server.ring_messages import BatchStep, Effect, LoadStage, SendToNext, StageLoadSucceeded, StartRequest
from shard_server.stage_worker import StageWorker
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

PROMPT = (3, 17, 101, 5, 9, 250)
JOURNAL = (11, 12, 13)


def first_segments(model_dir: Path, request: StartRequest) -> list[BatchStep]:
    """The batches a first stage (half the layers) sends on for `request`, up to its first decode row."""
    effects: queue.Queue[Effect] = queue.Queue()
    worker = StageWorker(effects.put)
    worker.start()
    try:
        stage = StageRange(0, NUM_LAYERS // 2, NUM_LAYERS)
        worker.submit(LoadStage(InstanceId("first-half"), model_dir, stage, 4, "stored", 2))
        assert isinstance(effects.get(timeout=60), StageLoadSucceeded)
        worker.submit(request)
        batches: list[BatchStep] = []
        while sum(1 for batch in batches for segment in batch.segments if segment.sample) < 1:
            effect = effects.get(timeout=60)
            if isinstance(effect, SendToNext) and isinstance(effect.message, BatchStep):
                batches.append(effect.message)
        return batches
    finally:
        worker.stop()


@pytest.mark.parametrize("grammar", ['start: "x"', None], ids=["with a grammar", "without"])
def test_only_the_first_step_of_a_constrained_replay_carries_the_journal(tmp_path: Path, grammar: str | None) -> None:
    model_dir = build_tiny_model("llama", tmp_path / "tiny")
    request = StartRequest(
        RequestId("r-r1"), PROMPT, 8, frozenset(), SamplingOptions(grammar=grammar), replay_tokens=JOURNAL
    )
    segments = [segment for batch in first_segments(model_dir, request) for segment in batch.segments]
    assert [segment.length for segment in segments] == [4, 1, 1]  # mlx-lm's chunks: 4, the rest, the last alone
    assert segments[0].grammar_replay_tokens == (JOURNAL if grammar is not None else ())
    assert segments[0].sampling is not None and segments[0].sampling.grammar == grammar
    assert all(segment.grammar_replay_tokens == () and segment.sampling is None for segment in segments[1:])
