"""Text to token ids and back, for one model: prompts in, streamed text out.

- `ModelTokenizer` wraps the Hugging Face tokenizer of a model directory (tokenizer.json,
  tokenizer_config.json with its `chat_template`, config.json through `read_model_config`, so its
  context length is the one the store and placement use, and `eos_token_id`). Encoding may take a
  while for a long prompt: call it from a worker thread.
- `IncrementalDetokenizer` turns token ids, fed one at a time, into text deltas that never hold a
  broken UTF-8 sequence, and whose concatenation equals decoding all the ids at once.
- `StopStringMatcher` holds back text that could still become a stop string and reports a match;
  the stop string and everything after it are never emitted.
"""

import functools
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from jinja2.exceptions import TemplateError, TemplateSyntaxError
from tokenizers.decoders import ByteLevel as ByteLevelDecoder
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gateway.chat_rendering import template_conversation
from gateway.generation_request import ChatMessage, ChatPrompt, TextPrompt
from gateway.tool_call_parsing import tool_call_format
from gateway.tool_definitions import ChatTemplateOptions, ToolDefinition
from services.models.model_card import generation_defaults
from services.models.model_config import ModelConfigError, read_model_config

REPLACEMENT_CHARACTER = "\ufffd"
"""What a decoder emits for an incomplete UTF-8 sequence: the sign to wait for more tokens."""


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's `bytes_to_unicode`, reversed: the byte each character of a byte-level token stands for."""
    byte_values = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = list(byte_values)
    shifted = 0
    for byte in range(256):
        if byte not in byte_values:  # unprintable bytes get the code points from 256 on, in order
            byte_values.append(byte)
            characters.append(256 + shifted)
            shifted += 1
    return {chr(character): byte for byte, character in zip(byte_values, characters, strict=True)}


class ChatTemplateError(ValueError):
    """The model has no chat template, or its template refused the conversation."""


class ToolsNotSupportedError(ChatTemplateError):
    """The request offers tools, but the model's chat template renders none."""


class ModelTokenizer:
    """The tokenizer of one model, with the facts about the model that tokenizing depends on."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        context_length: int,
        stop_token_ids: Iterable[int],
        generation_defaults: Mapping[str, float | int] | None = None,
    ) -> None:
        self.generation_defaults: Mapping[str, float | int] = dict(generation_defaults or {})
        """Sampling defaults of generation_config.json (temperature, top_p, top_k) for omitted fields."""
        if context_length < 1:
            raise ModelConfigError(f"context length must be positive, got {context_length}")
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._stop_token_ids = tuple(sorted(set(stop_token_ids)))
        # transformers may reconfigure the Rust tokenizer (truncation, padding) inside an encode
        # call; concurrent encodes from worker threads must not interleave those changes, and
        # one encode now settles them before any decode runs beside an encode.
        self._encode_lock = threading.Lock()
        backend: object = getattr(tokenizer, "backend_tokenizer", None)
        self._byte_level = isinstance(getattr(backend, "decoder", None), ByteLevelDecoder)
        """GPT-2 style byte-level BPE: each token is its bytes, one character per byte."""
        self._tokenizer.encode("", add_special_tokens=False)

    @classmethod
    def from_directory(cls, directory: Path) -> "ModelTokenizer":
        """Loads a Hugging Face style model directory. Blocking: reads files."""
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model_config = read_model_config(directory)
        generation_config = _read_json_object(directory / "generation_config.json")
        stop_token_ids = {*model_config.eos_token_ids, *_token_ids(generation_config.get("eos_token_id"))}
        if tokenizer.eos_token_id is not None:
            stop_token_ids.add(tokenizer.eos_token_id)
        return cls(
            tokenizer,
            context_length=model_config.context_length,
            stop_token_ids=stop_token_ids,
            generation_defaults=generation_defaults(directory),
        )

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus generated) the model attends to."""
        return self._context_length

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids: generation stops on them and they are never part of the text."""
        return self._stop_token_ids

    @property
    def vocab_size(self) -> int:
        """Token ids the tokenizer knows (a `logit_bias` key must be one of them)."""
        return len(self._tokenizer)

    @property
    def has_chat_template(self) -> bool:
        return bool(self._tokenizer.chat_template)

    @property
    def chat_template(self) -> str:
        """The template's text (every named template joined, for a tokenizer that has several)."""
        template: object = self._tokenizer.chat_template
        if isinstance(template, dict):
            return "\n".join(str(text) for text in cast(dict[str, object], template).values())
        return str(template or "")

    def encode_prompt(self, prompt: ChatPrompt | TextPrompt) -> list[int]:
        match prompt:
            case ChatPrompt(messages=messages, tools=tools, template_options=options):
                return self.encode_chat(messages, tools=tools, template_options=options)
            case TextPrompt(text=text):
                return self.encode_text(text)

    def encode_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolDefinition] = (),
        template_options: ChatTemplateOptions | None = None,
    ) -> list[int]:
        """Renders the model's chat template with the assistant's generation prompt, then encodes it.

        Raises `ChatTemplateError` when the model has no template or the template rejects the
        conversation (e.g. roles that do not alternate).
        """
        return self.encode_rendered(self.render_chat(messages, tools=tools, template_options=template_options))

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolDefinition] = (),
        template_options: ChatTemplateOptions | None = None,
    ) -> str:
        """The chat template's text for the conversation, with the generation prompt; see `encode_chat`.

        `tools` are passed to the template as `tools=`; a template that renders no tools refuses them
        (`ChatTemplateError`) rather than leaving the model unaware of them.
        """
        if not self.has_chat_template:
            raise ChatTemplateError("this model has no chat template; use the completions endpoint instead")
        supports_tools = tool_call_format(self.chat_template) is not None
        if tools and not supports_tools:
            raise ToolsNotSupportedError("this model's chat template does not support tools")
        conversation = template_conversation(messages, supports_tools=supports_tools)
        arguments = template_options.template_arguments() if template_options is not None else {}
        template_tools = [tool.as_template_tool() for tool in tools] or None
        try:
            return self._tokenizer.apply_chat_template(
                conversation, tools=template_tools, tokenize=False, add_generation_prompt=True, **arguments
            )
        except TemplateSyntaxError:
            raise  # the model's template is broken: not the client's fault
        except TemplateError as error:
            message = f"the model's chat template rejected the conversation: {error}"
            raise ChatTemplateError(message) from error

    def encode_rendered(self, rendered: str) -> list[int]:
        """Encodes a rendered chat template: it writes the special tokens (BOS included) itself."""
        with self._encode_lock:
            return self._tokenizer.encode(rendered, add_special_tokens=False)

    def encode_text(self, text: str) -> list[int]:
        """Encodes raw text, with whatever special tokens the tokenizer adds to a sequence (e.g. BOS)."""
        with self._encode_lock:
            return self._tokenizer.encode(text, add_special_tokens=True)

    def decode(self, token_ids: Sequence[int], *, keep_special_tokens: bool = False) -> str:
        """Decodes to text: special tokens skipped (unless kept), no clean-up, so decoding is concatenable."""
        return self._tokenizer.decode(
            list(token_ids), skip_special_tokens=not keep_special_tokens, clean_up_tokenization_spaces=False
        )

    def token_bytes(self, token_id: int) -> bytes:
        """One token's own bytes (a byte-level BPE token may hold part of a character), else the
        UTF-8 of its decoding: what OpenAI's logprobs call `bytes`."""
        if self._byte_level:
            raw = self._tokenizer.convert_ids_to_tokens(token_id)
            alphabet = _byte_level_alphabet()
            if raw is not None and all(character in alphabet for character in raw):
                return bytes(alphabet[character] for character in raw)
        return self.decode([token_id]).encode()

    def detokenizer(self, *, keep_special_tokens: bool = False) -> "IncrementalDetokenizer":
        """`keep_special_tokens`: for output whose structure is special tokens (gpt-oss's Harmony)."""
        if keep_special_tokens:
            return IncrementalDetokenizer(lambda token_ids: self.decode(token_ids, keep_special_tokens=True))
        return IncrementalDetokenizer(self.decode)


class IncrementalDetokenizer:
    """Text deltas from token ids fed one by one, each made only of complete characters.

    Each step decodes a short window that starts one emission back (so tokenizers that treat the
    first token specially, such as SentencePiece's leading space, decode the new token as they
    would in the full sequence) and emits what the new tokens added. While the window's text ends
    in U+FFFD, a multi-byte character is still incomplete and nothing is emitted. Because every
    emission ends on a complete character, the concatenated deltas plus `flush()` equal
    `decode(all ids)`: always with byte-level BPE decoders (GPT-2, Llama 3, SmolLM2, Qwen), and
    with SentencePiece byte-fallback decoders whenever the output is well-formed UTF-8 (those
    turn every byte of an invalid group into U+FFFD, so a broken tail can rewrite earlier text).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._token_ids: list[int] = []
        self._prefix_offset = 0
        """Start of the decoding window: the tokens of the previous emission, for context."""
        self._read_offset = 0
        """End of what has been emitted."""

    def add(self, token_id: int) -> str:
        """Feeds one token; returns the text it completes (often "", never a broken character)."""
        self._token_ids.append(token_id)
        emitted_text, window_text = self._decode_window()
        if len(window_text) > len(emitted_text) and not window_text.endswith(REPLACEMENT_CHARACTER):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._token_ids)
            return window_text[len(emitted_text) :]
        return ""

    def flush(self) -> str:
        """Returns whatever is still held back (an incomplete sequence decodes as U+FFFD)."""
        emitted_text, window_text = self._decode_window()
        self._prefix_offset = self._read_offset = len(self._token_ids)
        return window_text[len(emitted_text) :]

    def _decode_window(self) -> tuple[str, str]:
        window = self._token_ids[self._prefix_offset :]
        emitted_text = self._decode(window[: self._read_offset - self._prefix_offset])
        return emitted_text, self._decode(window)


@dataclass(frozen=True)
class StopScan:
    """The outcome of feeding text to a `StopStringMatcher`."""

    text: str
    """Text that is safe to emit now."""
    matched: str | None
    """The stop string that matched, if one did: generation must end."""


class StopStringMatcher:
    """Finds stop strings across text deltas, holding back any tail that might start one."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self._stop_strings = tuple(text for text in stop_strings if text)
        self._pending = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        return self._matched

    def feed(self, text: str) -> StopScan:
        """Adds generated text; returns what can be emitted and whether a stop string matched."""
        if self._matched is not None:
            return StopScan("", self._matched)
        if not self._stop_strings:
            return StopScan(text, None)
        pending = self._pending + text
        # The earliest occurrence wins: everything from it on is cut.
        found = [(pending.find(stop), stop) for stop in self._stop_strings]
        occurrences = [(index, stop) for index, stop in found if index >= 0]
        if occurrences:
            index, stop = min(occurrences)
            self._matched = stop
            self._pending = ""
            return StopScan(pending[:index], stop)
        held = max(_overlap(pending, stop) for stop in self._stop_strings)
        self._pending = pending[len(pending) - held :] if held else ""
        return StopScan(pending[: len(pending) - held], None)

    def flush(self) -> str:
        """The held-back tail, once generation ended without a match."""
        if self._matched is not None:
            return ""
        pending, self._pending = self._pending, ""
        return pending


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0


def _read_json_object(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    content: object = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise ModelConfigError(f"{path} does not hold a JSON object")
    return cast(dict[str, object], content)


def _token_ids(value: object) -> list[int]:
    """An `eos_token_id` entry: absent, one id, or a list of ids."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        items = cast(list[object], value)
        return [item for item in items if isinstance(item, int) and not isinstance(item, bool)]
    return []
