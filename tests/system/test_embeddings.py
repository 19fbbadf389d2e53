"""`POST /v1/embeddings` through `strata run` (two shards of the embedded SmolLM2), with the official
openai client: each vector is the final norm's output at the input's last token, bitwise what plain
mlx-lm computes in this process on the same weights (then L2-normalized by the same function), for
inputs batched together in one request; bad input is answered in OpenAI's error shape."""

import base64
from pathlib import Path
from typing import cast

import httpx
import mlx.core as mx
import numpy as np
import openai
import pytest
from mlx import nn
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

from gateway.embeddings import normalized
from gateway.tokenization import ModelTokenizer
from services.kernel.compute_dtype import default_compute_dtype
from services.kernel.settings import models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.platform.mlx_compute import convert_module
from services.platform.mlx_typing import float32_bytes
from tests.system.conftest import RunningCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

TEXTS = ["The lighthouse keeper watched the sea.", "Paris is the capital of France.", "A short one."]


def reference_vector(model: nn.Module, tokens: list[int]) -> bytes:
    """mlx-lm's own forward pass, as `generate_step` prefills (with its prompt cache): the final norm's
    output at the last token, float32, normalized as the gateway does."""
    inner = cast(nn.Module, model["model"])
    hidden = cast(mx.array, inner(mx.array(tokens)[None], cache=make_prompt_cache(model)))
    return normalized(float32_bytes(hidden[0, -1]))


def test_embeddings_equal_mlx_lm_bitwise_and_batch(running_cluster: RunningCluster) -> None:
    model_dir: Path = models_root(running_cluster.home) / EMBEDDED_MODEL_ID
    tokenizer = ModelTokenizer.from_directory(model_dir)
    model, _ = load_model(model_dir)
    model = convert_module(model, default_compute_dtype())
    client = openai.OpenAI(base_url=f"{running_cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=300)

    reply = client.embeddings.create(model=EMBEDDED_MODEL_ID, input=TEXTS, encoding_format="float")

    assert [item.index for item in reply.data] == [0, 1, 2]
    token_lists = [tokenizer.encode_text(text) for text in TEXTS]
    assert reply.usage.prompt_tokens == sum(len(tokens) for tokens in token_lists)
    for item, tokens in zip(reply.data, token_lists, strict=True):
        expected = np.frombuffer(reference_vector(model, tokens), dtype="<f4")
        got = np.array(item.embedding, dtype=np.float32)
        assert got.shape == (576,)
        assert got.tobytes() == expected.tobytes()  # bit for bit
        assert abs(float(np.linalg.norm(got.astype(np.float64))) - 1.0) < 1e-6

    # The official client asks for base64 by default and decodes it; token ids are an input too.
    by_default = client.embeddings.create(model=EMBEDDED_MODEL_ID, input=token_lists[1])
    assert (
        np.array(by_default.data[0].embedding, dtype=np.float32).tobytes()
        == np.array(reply.data[1].embedding, dtype=np.float32).tobytes()
    )
    raw = httpx.post(
        f"{running_cluster.gateway_url}/v1/embeddings",
        json={"model": EMBEDDED_MODEL_ID, "input": TEXTS[2], "encoding_format": "base64"},
        timeout=300,
    )
    assert raw.status_code == 200, raw.text
    decoded = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert decoded == np.array(reply.data[2].embedding, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": EMBEDDED_MODEL_ID, "input": []}, 400, "input must not be empty"),
        ({"model": EMBEDDED_MODEL_ID, "input": ""}, 400, "input 0 is empty"),
        ({"model": EMBEDDED_MODEL_ID, "input": [10**9]}, 400, "outside the vocabulary"),
        ({"model": EMBEDDED_MODEL_ID, "input": "hi", "dimensions": 8}, 400, "hidden size (576)"),
        ({"model": EMBEDDED_MODEL_ID, "input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": "no-such-model", "input": "hi"}, 404, "no-such-model"),
        ({"input": "hi"}, 400, "model"),
    ],
)
def test_bad_embedding_requests_get_openai_errors(
    running_cluster: RunningCluster, body: dict[str, object], status: int, fragment: str
) -> None:
    reply = httpx.post(f"{running_cluster.gateway_url}/v1/embeddings", json=body, timeout=60)

    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert fragment in error["message"]
    assert {"message", "type", "param", "code"} <= set(error)
