"""The last shard sends its sampled tokens round the ring before it confirms its caches are computed.

The caches are inputs of the logits, so they are computed once the tokens are; evaluating them again
before sending would only delay the ring's return hop. A tiny random-weight model's last stage runs one
batch on its stage worker, with the worker's own `evaluate` recorded next to what it emits.
"""

import queue
from pathlib import Path

import mlx.core as mx
import pytest

from services.kernel.ids import InstanceId, ModelId, RequestId
from services.kernel.sampling import SamplingOptions
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.platform.tensor_codec import encode
from shard_server import stage_worker
from shard_server.model_stage import StageRange
from shard_server.ring_messages import (
    BatchStep,
    Effect,
    LoadStage,
    SampledTokens,
    Segment,
    SendToNext,
    StageLoadFailed,
    StageLoadSucceeded,
)
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model

pytestmark = [pytest.mark.model, pytest.mark.timeout(120)]


def test_sampled_tokens_leave_before_the_cache_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = ModelStore(models_root(tmp_path)).model_dir(ModelId("tiny-llama"))
    build_tiny_model("llama", model_dir)
    events: list[str] = []
    loads: queue.Queue[StageLoadSucceeded | StageLoadFailed] = queue.Queue()
    sent: queue.Queue[SampledTokens] = queue.Queue()
    real_evaluate = stage_worker.evaluate

    def recording_evaluate(*arrays: object) -> None:
        events.append("evaluate")
        real_evaluate(*arrays)

    def emit(effect: Effect) -> None:
        if isinstance(effect, StageLoadSucceeded | StageLoadFailed):
            loads.put(effect)
        elif isinstance(effect, SendToNext) and isinstance(effect.message, SampledTokens):
            events.append("sent")
            sent.put(effect.message)

    monkeypatch.setattr(stage_worker, "evaluate", recording_evaluate)
    worker = stage_worker.StageWorker(emit)
    worker.start()
    try:
        last_stage = StageRange(NUM_LAYERS // 2, NUM_LAYERS, NUM_LAYERS)
        worker.submit(LoadStage(InstanceId("instance"), model_dir, last_stage, 4, "float32", 2))
        loaded = loads.get(timeout=60)
        assert isinstance(loaded, StageLoadSucceeded)
        hidden = mx.random.normal((1, 3, loaded.config.hidden_size), key=mx.random.key(3))
        segment = Segment(RequestId("request"), 0, 3, True, SamplingOptions())
        events.clear()
        worker.submit(BatchStep((segment,), encode(hidden), 0.0))

        tokens = sent.get(timeout=60)
    finally:
        worker.stop()  # after the batch it runs: its cache evaluation is recorded by then

    assert [token.request_id for token in tokens.tokens] == ["request"]
    assert events == ["sent", "evaluate"]
