"""Convert a llama-architecture GGUF file into a strata model directory that mlx-lm loads as it is.

MLX reads GGUF natively: Q4_0, Q4_1 and Q8_0 tensors come out of `mx.load` already in MLX's affine
quantized layout (`X.weight` packed uint32, `X.scales`, `X.biases`, 32 weights per group), so the import
only renames tensors to Hugging Face llama names, writes a config.json that describes them, and rebuilds
the GPT-2 style byte-level BPE tokenizer from the GGUF vocabulary. See docs/EMBEDDED_MODEL.md.

Output (in `destination`): the weights in `model_files` layout, config.json, tokenizer.json,
tokenizer_config.json (with the chat template), special_tokens_map.json and generation_config.json.
Anything outside that (another architecture, a k-quant, a SentencePiece vocabulary, rope scaling)
raises ValueError instead of producing a model that would load but talk nonsense.
"""

import json
import struct
from collections import Counter
from pathlib import Path
from typing import cast

import mlx.core as mx
from tokenizers import Tokenizer

from services.models.model_writer import save_model_directory

# general.file_type values whose tensors MLX loads exactly. For other types mx.load silently
# dequantizes to float16, which we refuse rather than import a model ~4x larger than the user chose.
SUPPORTED_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0"}
SUPPORTED_ARCHITECTURES = ("llama",)
_GGUF_GROUP_SIZE = 32  # every block format above holds 32 weights per block

_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# llama.cpp pre-tokenizer names: these split every digit apart before the GPT-2 regex.
_DIGIT_SPLITTING_PRE_TOKENIZERS = ("smollm", "starcoder", "refact", "codeshell")
_PLAIN_PRE_TOKENIZERS = ("gpt2", "default")
_CONTROL_TOKEN, _USER_DEFINED_TOKEN = 3, 4

GgufMetadata = dict[str, object]


def import_gguf(gguf_path: Path, destination: Path) -> None:
    """Write the model in `gguf_path` into `destination` (created if needed) in strata's layout."""
    tensors, metadata = _load_gguf(gguf_path)
    architecture = _metadata_str(metadata, "general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{gguf_path.name}: GGUF architecture {architecture!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    file_type = _optional_int(metadata, "general.file_type")
    if file_type is not None and file_type not in SUPPORTED_FILE_TYPES:
        raise ValueError(
            f"{gguf_path.name}: GGUF quantization type {file_type} is not supported "
            f"(supported: {', '.join(SUPPORTED_FILE_TYPES.values())})"
        )

    weights = {_hugging_face_name(name): array for name, array in tensors.items()}
    context_length = _optional_int(metadata, "llama.context_length") or 4096
    config = _llama_config(metadata, weights, context_length)
    # Built before anything is written, so an unsupported vocabulary leaves no half-written directory.
    tokenizer_files = _tokenizer_files(metadata, context_length)
    save_model_directory(destination, config, weights)
    for file_name, text in tokenizer_files.items():
        (destination / file_name).write_text(text)


def _load_gguf(gguf_path: Path) -> tuple[dict[str, mx.array], GgufMetadata]:
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    loaded = mx.load(str(gguf_path), return_metadata=True)
    if not isinstance(loaded, tuple):
        raise ValueError(f"{gguf_path} did not load as a GGUF file with metadata")
    tensors, metadata = loaded
    return tensors, dict(metadata)


def _hugging_face_name(gguf_name: str) -> str:
    """`blk.3.attn_q.scales` -> `model.layers.3.self_attn.q_proj.scales`."""
    module, _, leaf = gguf_name.rpartition(".")
    parts = module.split(".")
    if len(parts) == 1 and module in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[module]}.{leaf}"
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{int(parts[1])}.{_LAYER_TENSORS[parts[2]]}.{leaf}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no place in a llama model (unsupported variant)")


def _llama_config(metadata: GgufMetadata, weights: dict[str, mx.array], context_length: int) -> dict[str, object]:
    for key, value in metadata.items():
        if key.startswith("llama.rope.scaling.type") and value not in ("none", ""):
            raise ValueError(f"GGUF rope scaling {value!r} is not supported")
    hidden_size = _metadata_int(metadata, "llama.embedding_length")
    num_heads = _metadata_int(metadata, "llama.attention.head_count")
    head_dim = _optional_int(metadata, "llama.attention.key_length") or hidden_size // num_heads
    rope_dims = _optional_int(metadata, "llama.rope.dimension_count") or head_dim
    if rope_dims != head_dim:
        raise ValueError(f"partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported")
    tokens = _metadata_strings(metadata, "tokenizer.ggml.tokens")
    config: dict[str, object] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": _metadata_int(metadata, "llama.feed_forward_length"),
        "num_hidden_layers": _metadata_int(metadata, "llama.block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": _optional_int(metadata, "llama.attention.head_count_kv") or num_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _shortest_float32(_metadata_float(metadata, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _shortest_float32(_optional_float(metadata, "llama.rope.freq_base") or 10000.0),
        # GGUF stores Q and K rows permuted for the interleaved rotary layout; reading them with the
        # traditional rope avoids un-permuting every tensor.
        "rope_traditional": True,
        "max_position_embeddings": context_length,
        "vocab_size": _optional_int(metadata, "llama.vocab_size") or len(tokens),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "bos_token_id": _optional_int(metadata, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _optional_int(metadata, "tokenizer.ggml.eos_token_id"),
    }
    quantization = _quantization_config(weights)
    if quantization:
        config["quantization"] = quantization
    return {key: value for key, value in config.items() if value is not None}


def _quantization_config(weights: dict[str, mx.array]) -> dict[str, object]:
    """mlx-lm's `quantization` dict: the most common bit width as default, per-module overrides."""
    bits_by_module: dict[str, int] = {}
    for key, array in weights.items():
        if key.endswith(".weight") and array.dtype == mx.uint32:
            module = key.removesuffix(".weight")
            scales = weights.get(f"{module}.scales")
            if scales is None or array.shape[-1] % scales.shape[-1]:
                raise ValueError(f"GGUF tensor {module} is packed in a layout MLX cannot use")
            # Each group of 32 weights packs into `bits` uint32 words.
            bits_by_module[module] = array.shape[-1] // scales.shape[-1]
        elif array.dtype not in (mx.float32, mx.float16, mx.bfloat16) and not key.endswith((".scales", ".biases")):
            raise ValueError(f"GGUF tensor {key} has unsupported dtype {array.dtype}")
    if not bits_by_module:
        return {}
    default_bits = Counter(bits_by_module.values()).most_common(1)[0][0]
    quantization: dict[str, object] = {"group_size": _GGUF_GROUP_SIZE, "bits": default_bits}
    for module, bits in sorted(bits_by_module.items()):
        if bits != default_bits:
            quantization[module] = {"group_size": _GGUF_GROUP_SIZE, "bits": bits}
    return quantization


def _tokenizer_files(metadata: GgufMetadata, context_length: int) -> dict[str, str]:
    """Text of tokenizer.json, tokenizer_config.json, special_tokens_map.json and generation_config.json."""
    tokens = _metadata_strings(metadata, "tokenizer.ggml.tokens")

    def token_named(key: str) -> str | None:
        token_id = _optional_int(metadata, key)
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    named_tokens = {
        "bos_token": token_named("tokenizer.ggml.bos_token_id"),
        "eos_token": token_named("tokenizer.ggml.eos_token_id"),
        "unk_token": token_named("tokenizer.ggml.unknown_token_id"),
        "pad_token": token_named("tokenizer.ggml.padding_token_id"),
    }
    special_tokens_map = {name: token for name, token in named_tokens.items() if token is not None}
    add_bos_token = bool(_optional_int(metadata, "tokenizer.ggml.add_bos_token"))
    tokenizer_json = _tokenizer_json(metadata, bos_token=named_tokens["bos_token"] if add_bos_token else None)
    # Parsing it back proves the tokenizers library accepts it, and gives its canonical form.
    tokenizer_text = Tokenizer.from_str(json.dumps(tokenizer_json)).to_str(pretty=True)

    tokenizer_config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map,
        "add_bos_token": add_bos_token,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }
    chat_template = _optional_str(metadata, "tokenizer.chat_template")
    if chat_template:
        tokenizer_config["chat_template"] = chat_template
    generation_config = {
        "bos_token_id": _optional_int(metadata, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _optional_int(metadata, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _optional_int(metadata, "tokenizer.ggml.padding_token_id"),
    }
    return {
        "tokenizer.json": tokenizer_text,
        "tokenizer_config.json": _json_text(tokenizer_config),
        "special_tokens_map.json": _json_text(special_tokens_map),
        "generation_config.json": _json_text(
            {key: value for key, value in generation_config.items() if value is not None}
        ),
    }


def _tokenizer_json(metadata: GgufMetadata, bos_token: str | None) -> dict[str, object]:
    """A `tokenizers` byte-level BPE in its JSON form; `bos_token` is prepended to every encoding if set."""
    tokenizer_model = _metadata_str(metadata, "tokenizer.ggml.model")
    if tokenizer_model != "gpt2":
        raise ValueError(f"GGUF tokenizer {tokenizer_model!r} is not supported (only byte-level BPE, 'gpt2')")
    pre_tokenizer_name = _optional_str(metadata, "tokenizer.ggml.pre") or "default"
    if pre_tokenizer_name not in _DIGIT_SPLITTING_PRE_TOKENIZERS + _PLAIN_PRE_TOKENIZERS:
        raise ValueError(f"GGUF pre-tokenizer {pre_tokenizer_name!r} is not supported")

    tokens = _metadata_strings(metadata, "tokenizer.ggml.tokens")
    token_types = _metadata_ints(metadata, "tokenizer.ggml.token_type")
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(token_types) != len(tokens):
        raise ValueError("GGUF vocabulary has duplicate tokens or mismatched token types")
    merges: list[list[str]] = []
    for merge in _metadata_strings(metadata, "tokenizer.ggml.merges"):
        left, separator, right = merge.partition(" ")
        if not separator:
            raise ValueError(f"GGUF merge {merge!r} is not two space-separated tokens")
        merges.append([left, right])

    byte_level: dict[str, object] = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    pre_tokenizer = (
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
        if pre_tokenizer_name in _DIGIT_SPLITTING_PRE_TOKENIZERS
        else byte_level
    )
    post_processor: dict[str, object] = {**byte_level, "trim_offsets": False}
    if bos_token is not None:
        bos = {"SpecialToken": {"id": bos_token, "type_id": 0}}
        post_processor = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                bos,
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos_token: {"id": bos_token, "ids": [vocab[bos_token]], "tokens": [bos_token]}},
        }
    added_tokens = [
        {
            "id": token_id,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": kind == _CONTROL_TOKEN,
        }
        for token_id, (token, kind) in enumerate(zip(tokens, token_types, strict=True))
        if kind in (_CONTROL_TOKEN, _USER_DEFINED_TOKEN)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _scalar(metadata: GgufMetadata, key: str) -> object | None:
    # mx.load returns GGUF numbers as 0-d arrays, strings as str and string arrays as lists.
    value = metadata.get(key)
    if isinstance(value, mx.array):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _optional_int(metadata: GgufMetadata, key: str) -> int | None:
    value = _scalar(metadata, key)
    if value is None:
        return None
    if not isinstance(value, int):  # bool is an int, as GGUF flags should be
        raise ValueError(f"GGUF metadata {key} is {value!r}, not an integer")
    return int(value)


def _metadata_int(metadata: GgufMetadata, key: str) -> int:
    value = _optional_int(metadata, key)
    if value is None:
        raise ValueError(f"GGUF metadata lacks {key}")
    return value


def _optional_float(metadata: GgufMetadata, key: str) -> float | None:
    value = _scalar(metadata, key)
    if value is None:
        return None
    if not isinstance(value, int | float):
        raise ValueError(f"GGUF metadata {key} is {value!r}, not a number")
    return float(value)


def _metadata_float(metadata: GgufMetadata, key: str) -> float:
    value = _optional_float(metadata, key)
    if value is None:
        raise ValueError(f"GGUF metadata lacks {key}")
    return value


def _optional_str(metadata: GgufMetadata, key: str) -> str | None:
    value = metadata.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"GGUF metadata {key} is not a string")
    return value


def _metadata_str(metadata: GgufMetadata, key: str) -> str:
    value = _optional_str(metadata, key)
    if value is None:
        raise ValueError(f"GGUF metadata lacks {key}")
    return value


def _metadata_strings(metadata: GgufMetadata, key: str) -> list[str]:
    value = metadata.get(key)
    if not isinstance(value, list):
        raise ValueError(f"GGUF metadata lacks the string list {key}")
    items = cast(list[object], value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"GGUF metadata {key} holds non-strings")
    return cast(list[str], items)


def _metadata_ints(metadata: GgufMetadata, key: str) -> list[int]:
    value = _scalar(metadata, key)
    if not isinstance(value, list):
        raise ValueError(f"GGUF metadata lacks the integer list {key}")
    items = cast(list[object], value)
    if not all(isinstance(item, int) for item in items):
        raise ValueError(f"GGUF metadata {key} holds non-integers")
    return cast(list[int], items)


def _shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32, so config.json says 1e-05, not 9.99999974e-06."""
    as_float32: float = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(1, 10):
        candidate = float(f"{as_float32:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == as_float32:
            return candidate
    return as_float32


def _json_text(content: object) -> str:
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"
