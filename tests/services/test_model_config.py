"""The one config.json parser: context length, nested text configs, layer kinds, MLA, experts, KV bytes."""

import json
import math
import struct
from pathlib import Path

import pytest
from pydantic import JsonValue

from gateway.tokenization import ModelTokenizer
from services.kernel.ids import ModelId
from services.models.kv_footprint import (
    FLOAT32_BYTES,
    WINDOWED_MAX_SEQUENCES,
    kv_bytes_per_layer,
    kv_bytes_per_token_per_layer,
    layer_kv_caches,
    layer_kv_room,
)
from services.models.model_config import (
    CONFIG_FILE,
    CONTEXT_LENGTH_KEYS,
    DEFAULT_CONTEXT_LENGTH,
    ModelConfig,
    ModelConfigError,
    ModuleQuantization,
    parse_model_config,
    read_model_config,
)
from services.models.model_files import read_manifest
from services.models.model_spec import model_spec
from shard_server.admission import kv_budget_tokens
from tests.gateway.tiny_tokenizer import build_model_directory

pytestmark = pytest.mark.unit

SOURCE = Path("/models/tiny") / CONFIG_FILE

TINY: dict[str, JsonValue] = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}

SMOLLM2_CONFIG: dict[str, JsonValue] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "rope_traditional": True,
    "max_position_embeddings": 8192,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "quantization": {"group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}},
}
"""The config.json `strata models import --embedded` writes for SmolLM2-135M-Instruct."""


def parse(**changes: JsonValue) -> ModelConfig:
    return parse_model_config({**TINY, **changes}, SOURCE)


def layer_types(*kinds: str) -> list[JsonValue]:
    return list(kinds)


def previous_kv_bytes_per_layer(config: dict[str, JsonValue], context_length: int, concurrent_rows: int) -> int:
    """model_spec's formula before `kv_footprint`: the figures for today's models must not move."""

    def config_int(key: str, default: int) -> int:
        value = config.get(key, default)
        return value if isinstance(value, int) else default

    hidden = config_int("hidden_size", 0)
    heads = config_int("num_attention_heads", 1)
    kv_heads = config_int("num_key_value_heads", heads)
    head_dim = config_int("head_dim", hidden // max(heads, 1))
    return 2 * kv_heads * head_dim * context_length * concurrent_rows * 4


# --- context length ---


@pytest.mark.parametrize("key", CONTEXT_LENGTH_KEYS)
def test_each_context_length_key_is_read(key: str) -> None:
    values = {name: value for name, value in TINY.items() if name != "max_position_embeddings"}
    config = parse_model_config({**values, key: 3000}, SOURCE)
    assert (config.context_length, config.context_length_key) == (3000, key)


def test_max_position_embeddings_comes_first_and_null_counts_as_unset() -> None:
    assert parse(seq_length=9999).context_length == 512
    assert parse(max_position_embeddings=None, seq_length=9999).context_length == 9999


def test_no_context_length_key_gives_the_default() -> None:
    config = parse(max_position_embeddings=None)
    assert (config.context_length, config.context_length_key) == (DEFAULT_CONTEXT_LENGTH, None)


def test_a_mistyped_context_length_is_refused() -> None:
    with pytest.raises(ModelConfigError, match=r"'seq_length' is '8k', not a positive integer"):
        parse(max_position_embeddings=None, seq_length="8k")


def write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A float32 safetensors file of zeros, written without MLX: the manifest reads headers only."""
    header: dict[str, object] = {}
    offset = 0
    for key, shape in tensors.items():
        size = FLOAT32_BYTES * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def test_gateway_store_and_admission_agree_on_a_seq_length_context(tmp_path: Path) -> None:
    # The bug this parser fixes: the gateway read seq_length (8192), the store defaulted to 4096, so
    # requests past 4096 tokens were admitted by the gateway and refused by the shard forever.
    directory = build_model_directory(tmp_path / "model")
    config = json.loads((directory / CONFIG_FILE).read_text())
    del config["max_position_embeddings"]
    config.update(seq_length=8192, tie_word_embeddings=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    write_safetensors(
        directory / "model.safetensors",
        {
            "model.embed_tokens.weight": [vocab, hidden],
            "model.layers.0.mlp.up_proj.weight": [hidden, hidden],
            "model.layers.1.mlp.up_proj.weight": [hidden, hidden],
            "model.norm.weight": [hidden],
        },
    )

    gateway_context = ModelTokenizer.from_directory(directory).context_length
    parsed = read_model_config(directory)
    spec = model_spec(ModelId("tiny"), directory)
    assert gateway_context == read_manifest(directory).context_length == 8192
    assert kv_budget_tokens(spec.kv_bytes_per_layer, kv_bytes_per_token_per_layer(parsed)) == 8192


# --- required fields ---


def test_a_missing_required_field_names_the_file_and_the_key() -> None:
    values = {name: value for name, value in TINY.items() if name != "hidden_size"}
    with pytest.raises(ModelConfigError, match=r"/models/tiny/config\.json has no 'hidden_size'"):
        parse_model_config(values, SOURCE)


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_hidden_layers", "6"), ("vocab_size", True), ("num_attention_heads", 0), ("model_type", 3)],
)
def test_a_mistyped_required_field_is_refused(key: str, value: JsonValue) -> None:
    with pytest.raises(ModelConfigError, match=rf"config\.json: '{key}' is {value!r}, not "):
        parse(**{key: value})


def test_mistyped_optional_fields_are_refused_too() -> None:
    with pytest.raises(ModelConfigError, match="'tie_word_embeddings' is 'yes', not true or false"):
        parse(tie_word_embeddings="yes")
    with pytest.raises(ModelConfigError, match="'eos_token_id'"):
        parse(eos_token_id=["2"])
    with pytest.raises(ModelConfigError, match=r"'bits'.*\(in 'quantization'\)"):
        parse(quantization={"group_size": 64})


def test_an_unreadable_file_is_a_model_config_error(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="cannot be read"):
        read_model_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ModelConfigError, match="is not a JSON object"):
        read_model_config(tmp_path)


def test_the_config_is_frozen() -> None:
    config = parse()
    with pytest.raises(ValueError, match="frozen"):
        config.hidden_size = 1  # pyright: ignore[reportAttributeAccessIssue]


# --- today's models: unchanged figures ---


def test_smollm2_figures() -> None:
    config = parse_model_config(SMOLLM2_CONFIG, SOURCE)
    assert (config.num_layers, config.hidden_size, config.vocab_size, config.context_length) == (30, 576, 49152, 8192)
    assert (config.num_key_value_heads, config.head_dim, config.tie_word_embeddings) == (3, 64, True)
    assert config.eos_token_ids == (2,)
    assert config.quantization is not None
    assert config.quantization.group_size_of("model.embed_tokens") == 32
    assert config.quantization.modules["model.embed_tokens"] == ModuleQuantization(group_size=32, bits=8)
    assert config.layer_attention == ("full",) * 30
    assert config.latent_attention is None and config.experts is None
    assert kv_bytes_per_token_per_layer(config) == 2 * 3 * 64 * FLOAT32_BYTES == 1536
    assert kv_bytes_per_layer(config, 8192, 1) == previous_kv_bytes_per_layer(SMOLLM2_CONFIG, 8192, 1) == 12_582_912


@pytest.mark.parametrize(
    "changes",
    [
        {"model_type": "llama", "tie_word_embeddings": False},
        {"model_type": "qwen2", "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 32768},
        {"model_type": "qwen3", "head_dim": 16, "layer_types": ["full_attention"] * 6},
        {"model_type": "llama", "num_key_value_heads": None, "head_dim": None},
    ],
)
def test_tiny_llama_and_qwen_kv_bytes_are_unchanged(changes: dict[str, JsonValue]) -> None:
    raw = {**TINY, **changes}
    config = parse_model_config(raw, SOURCE)
    assert config.layer_attention == ("full",) * 6
    for context_length, rows in ((1, 1), (512, 1), (512, 3)):
        assert kv_bytes_per_layer(config, context_length, rows) == previous_kv_bytes_per_layer(
            {key: value for key, value in raw.items() if value is not None}, context_length, rows
        )


def test_as_dict_is_a_fresh_copy() -> None:
    config = parse(text_config=None, rope_scaling={"factor": 2.0})
    copy = config.as_dict()
    nested = copy["rope_scaling"]
    assert isinstance(nested, dict)
    nested["factor"] = 8.0
    assert config.as_dict()["rope_scaling"] == {"factor": 2.0}


# --- families of the coming issue: parsed, not yet served ---

GEMMA3_CONFIG: dict[str, JsonValue] = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "eos_token_id": [1, 106],
    "torch_dtype": "bfloat16",
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"},
}
"""gemma-3-4b-it's config.json (trimmed): the text config names only what differs from the defaults."""


def test_gemma3_text_config_is_merged_with_mlx_lm_defaults() -> None:
    config = parse_model_config(GEMMA3_CONFIG, SOURCE)
    assert (config.model_type, config.text_model_type) == ("gemma3", "gemma3_text")
    assert (config.num_layers, config.hidden_size, config.vocab_size) == (34, 2560, 262208)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 4, 256)
    assert (config.context_length, config.sliding_window) == (32768, 1024)
    assert (config.dtype, config.eos_token_ids) == ("bfloat16", (1, 106))
    # Every sixth layer is global, the rest slide (mlx-lm's gemma3_text make_cache).
    assert [layer for layer, kind in enumerate(config.layer_attention) if kind == "full"] == [5, 11, 17, 23, 29]


def test_text_config_values_win_and_the_top_level_fills_in() -> None:
    text: dict[str, JsonValue] = {"hidden_size": 128, "num_hidden_layers": 2, "tie_word_embeddings": None}
    config = parse(model_type="mistral3", tie_word_embeddings=False, text_config=text)
    assert (config.hidden_size, config.num_layers, config.vocab_size) == (128, 2, 512)
    assert config.tie_word_embeddings is False
    assert config.text_model_type is None


def test_layer_types_decide_the_layer_kinds() -> None:
    config = parse(layer_types=layer_types(*["sliding_attention", "full_attention"] * 3), sliding_window=128)
    assert config.layer_attention == ("sliding", "full") * 3
    assert [config.window_of(layer) for layer in range(2)] == [128, None]
    assert parse(layer_types=layer_types(*["linear_attention"] * 6)).layer_attention == ("other",) * 6


def test_bad_layer_types_are_refused() -> None:
    with pytest.raises(ModelConfigError, match="names 2 layers, the model has 6"):
        parse(layer_types=layer_types("full_attention", "full_attention"))
    with pytest.raises(ModelConfigError, match="has no 'sliding_window'"):
        parse(layer_types=layer_types(*["sliding_attention"] * 6))


def test_qwen2_use_sliding_window_slides_from_max_window_layers() -> None:
    config = parse(use_sliding_window=True, sliding_window=256, max_window_layers=4)
    assert config.layer_attention == ("full",) * 4 + ("sliding",) * 2
    assert parse(use_sliding_window=False, sliding_window=256).layer_attention == ("full",) * 6
    assert parse(sliding_window=4096).layer_attention == ("full",) * 6  # Mistral's bare window: mlx-lm ignores it


def test_sliding_layers_hold_at_most_their_window() -> None:
    config = parse(sliding_window_pattern=3, sliding_window=100)
    caches = layer_kv_caches(config)
    per_token = 2 * 2 * 16 * FLOAT32_BYTES
    assert [cache.window for cache in caches] == [100, 100, None] * 2
    assert [cache.bytes_for(500) for cache in caches[:3]] == [100 * per_token, 100 * per_token, 500 * per_token]
    assert kv_bytes_per_layer(config, 500, 2) == 500 * per_token * 2  # the global layers bound the rest
    all_sliding = parse(sliding_window_pattern=100, sliding_window=100)
    # The admission budget is whole contexts, whatever the windows: many short requests may run.
    assert kv_bytes_per_layer(all_sliding, 500, 1) == 500 * per_token


def test_placement_reserves_a_sliding_layer_room_for_its_windows_only_when_that_is_less() -> None:
    config = parse(sliding_window_pattern=3, sliding_window=100)
    per_token = 2 * 2 * 16 * FLOAT32_BYTES
    # A short context: 32 windows would need more than the context itself, so every layer gets it all.
    assert layer_kv_room(config, 500, 1) == ((500 * per_token,) * 6, 0)
    # A long one: sliding layers get WINDOWED_MAX_SEQUENCES windows, and admission is capped to match.
    rooms, cap = layer_kv_room(config, 32_768, 1)
    windows = WINDOWED_MAX_SEQUENCES * 100 * per_token
    assert rooms == (windows, windows, 32_768 * per_token) * 2
    assert cap == WINDOWED_MAX_SEQUENCES


DEEPSEEK_V3_CONFIG: dict[str, JsonValue] = {
    "model_type": "deepseek_v3",
    "hidden_size": 7168,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "vocab_size": 129280,
    "max_position_embeddings": 163840,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 2048,
    "quantization_config": {"quant_method": "fp8"},
}


def test_mla_caches_the_latent_per_token() -> None:
    config = parse_model_config(DEEPSEEK_V3_CONFIG, SOURCE)
    assert config.latent_attention is not None
    assert (config.latent_attention.kv_lora_rank, config.latent_attention.qk_rope_head_dim) == (512, 64)
    assert kv_bytes_per_token_per_layer(config) == (512 + 64) * FLOAT32_BYTES
    assert kv_bytes_per_layer(config, 1000, 2) == (512 + 64) * FLOAT32_BYTES * 1000 * 2


def test_mla_without_its_head_sizes_is_refused() -> None:
    values = {key: value for key, value in DEEPSEEK_V3_CONFIG.items() if key != "qk_rope_head_dim"}
    with pytest.raises(ModelConfigError, match="has no 'qk_rope_head_dim'"):
        parse_model_config(values, SOURCE)


def test_experts_under_each_family_name() -> None:
    deepseek = parse_model_config(DEEPSEEK_V3_CONFIG, SOURCE).experts
    assert deepseek is not None
    assert (deepseek.count, deepseek.per_token, deepseek.intermediate_size, deepseek.shared_count) == (256, 8, 2048, 1)
    qwen3_moe = parse(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768).experts
    assert qwen3_moe is not None and (qwen3_moe.count, qwen3_moe.per_token) == (128, 8)
    mixtral = parse(num_local_experts=8, num_experts_per_tok=2).experts
    assert mixtral is not None and (mixtral.count, mixtral.intermediate_size) == (8, None)
    gpt_oss = parse(num_local_experts=32, experts_per_token=4).experts
    assert gpt_oss is not None and gpt_oss.per_token == 4
    assert parse(num_experts=0).experts is None
