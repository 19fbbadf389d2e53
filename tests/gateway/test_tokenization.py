"""ModelTokenizer over a real tokenizer directory: chat template, plain text, EOS ids, context."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from gateway.generation_request import ChatMessage, ChatPrompt, TextPrompt
from gateway.tokenization import ChatTemplateError, ModelTokenizer
from services.models.model_config import DEFAULT_CONTEXT_LENGTH, ModelConfigError
from tests.gateway.tiny_tokenizer import END_OF_TEXT, IM_END, build_model_directory, train_byte_level_bpe

pytestmark = pytest.mark.unit


def test_chat_is_rendered_with_the_generation_prompt(model_tokenizer: ModelTokenizer, model_directory: Path) -> None:
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi 😀")]
    token_ids = model_tokenizer.encode_chat(messages)
    rendered = AutoTokenizer.from_pretrained(model_directory).decode(token_ids)  # special tokens kept
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 😀<|im_end|>\n<|im_start|>assistant\n"
    )


def test_encode_prompt_dispatches_on_the_prompt_kind(model_tokenizer: ModelTokenizer) -> None:
    chat = ChatPrompt(messages=(ChatMessage(role="user", content="Hello"),))
    assert model_tokenizer.encode_prompt(chat) == model_tokenizer.encode_chat(chat.messages)
    assert model_tokenizer.encode_prompt(TextPrompt(text="Hello")) == model_tokenizer.encode_text("Hello")
    assert model_tokenizer.decode(model_tokenizer.encode_text("Hello world")) == "Hello world"


def test_template_errors_become_chat_template_errors(model_tokenizer: ModelTokenizer) -> None:
    with pytest.raises(ChatTemplateError, match="must not start with the assistant"):
        model_tokenizer.encode_chat([ChatMessage(role="assistant", content="Hi")])


def test_a_model_without_chat_template_refuses_chats_but_encodes_text(tmp_path: Path) -> None:
    tokenizer = ModelTokenizer.from_directory(build_model_directory(tmp_path, chat_template=None))
    assert not tokenizer.has_chat_template
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tokenizer.encode_chat([ChatMessage(role="user", content="Hi")])
    assert tokenizer.encode_text("Hello")


def test_stop_ids_join_config_generation_config_and_tokenizer(tmp_path: Path) -> None:
    vocabulary = train_byte_level_bpe()
    end_of_text, im_end = vocabulary.token_to_id(END_OF_TEXT), vocabulary.token_to_id(IM_END)
    assert end_of_text is not None and im_end is not None
    tokenizer = ModelTokenizer.from_directory(build_model_directory(tmp_path, generation_eos_ids=[7, im_end]))
    assert tokenizer.stop_token_ids == tuple(sorted({end_of_text, im_end, 7}))


def test_context_length_comes_from_config(tmp_path: Path) -> None:
    tokenizer = ModelTokenizer.from_directory(build_model_directory(tmp_path, context_length=1234))
    assert tokenizer.context_length == 1234


def test_missing_context_length_is_the_default_the_store_uses(tmp_path: Path) -> None:
    directory = build_model_directory(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    del config["max_position_embeddings"]
    (directory / "config.json").write_text(json.dumps(config))
    assert ModelTokenizer.from_directory(directory).context_length == DEFAULT_CONTEXT_LENGTH


def test_an_incomplete_config_is_a_clear_error(tmp_path: Path) -> None:
    directory = build_model_directory(tmp_path)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelConfigError, match=r"config\.json has no 'num_hidden_layers'"):
        ModelTokenizer.from_directory(directory)
