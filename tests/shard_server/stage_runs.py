"""Stage runs that tests compare bitwise with a fast path switched on and off."""

from pathlib import Path

import mlx.core as mx
import pytest

from shard_server.batched_forward import RequestRows
from shard_server.model_stage import ModelStage, StageRange


def prefill_and_decode(stage: ModelStage) -> mx.array:
    """Four requests prefilled in one batch, then one batched decode step: logits, or the last stage's
    hidden states where the stage has no head (hidden states stand in for tokens where it has no embedding).
    """
    prompts = [[3, 5, 7, 11], [13], [17, 19, 23, 29, 31, 37], [41, 43]]
    caches = [stage.make_cache() for _ in prompts]
    requests: list[RequestRows] = []
    start = 0
    for prompt, cache in zip(prompts, caches, strict=True):
        requests.append(RequestRows(cache, start, len(prompt)))
        start += len(prompt)
    decode_requests = [RequestRows(cache, index, 1) for index, cache in enumerate(caches)]
    outputs: list[mx.array] = []
    for tokens, step in (([token for prompt in prompts for token in prompt], requests), ([7] * 4, decode_requests)):
        if stage.stage.is_first:
            hidden = stage.embed(mx.array(tokens)[None])
        else:
            hidden = mx.random.normal((1, len(tokens), stage.hidden_size), key=mx.random.key(len(tokens)))
        hidden = stage.run_layers(hidden, step)
        outputs.append(stage.logits(hidden) if stage.stage.is_last else hidden)
    return mx.concatenate(outputs, axis=1)


def stages_switched(
    model_dir: Path, stage_range: StageRange, monkeypatch: pytest.MonkeyPatch, *switch_variables: str
) -> list[ModelStage]:
    """The stage loaded with every one of `switch_variables` on, then all off (float32, batching checked)."""
    stages: list[ModelStage] = []
    for switch in ("on", "off"):
        for variable in switch_variables:
            monkeypatch.setenv(variable, switch)
        stage = ModelStage(model_dir, stage_range, "float32")
        assert stage.check_batching(40, threads=2)
        stages.append(stage)
    return stages
