"""Tiny real tokenizers built offline in a test's temporary directory.

`build_model_directory` writes a Hugging Face style model directory around a byte-level BPE
(GPT-2 / SmolLM2 style) trained in milliseconds on a few sentences: tokenizer.json,
tokenizer_config.json with a ChatML Jinja template and the EOS token, config.json with the context
length. Its vocabulary is small, so CJK characters and emoji split across several tokens.

`build_sentencepiece_style_tokenizer` builds the Llama / Mistral style: Metaspace pre-tokenizer,
byte fallback (`<0xE6>` tokens) and a decoder that strips the first leading space.
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.first %}"
    "{{ raise_exception('the conversation must not start with the assistant') }}"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TRAINING_TEXT = (
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Hello there, how are you today? I am fine, thank you.",
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "naïve café résumé, über straße, 日本語のテキスト, 中文文本, emoji 😀🎉 ok.",
)


def train_byte_level_bpe(vocab_size: int = 400) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(TRAINING_TEXT) * 5, trainer)
    return tokenizer


def build_model_directory(
    directory: Path,
    *,
    context_length: int = 256,
    chat_template: str | None = CHAT_TEMPLATE,
    generation_eos_ids: list[int] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_byte_level_bpe()
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": IM_END,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    model_config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "vocab_size": tokenizer.get_vocab_size(),
        "max_position_embeddings": context_length,
        "eos_token_id": tokenizer.token_to_id(END_OF_TEXT),
    }
    (directory / "config.json").write_text(json.dumps(model_config))
    if generation_eos_ids is not None:
        (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos_ids}))
    return directory


def build_sentencepiece_style_tokenizer() -> Tokenizer:
    """A Metaspace BPE over ASCII only, so every other character falls back to byte tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[chr(code) for code in range(32, 127)] + ["▁"],
        limit_alphabet=96,
        show_progress=False,
    )
    tokenizer.train_from_iterator([text.encode("ascii", "ignore").decode() for text in TRAINING_TEXT] * 5, trainer)
    definition = json.loads(tokenizer.to_str())
    vocabulary: dict[str, int] = definition["model"]["vocab"]
    for byte in range(256):
        vocabulary.setdefault(f"<0x{byte:02X}>", len(vocabulary))
    definition["model"]["byte_fallback"] = True
    definition["model"]["unk_token"] = "<unk>"
    rebuilt = Tokenizer.from_str(json.dumps(definition))
    rebuilt.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return rebuilt
