"""The pure splitters of generated text: tool calls in each family's format, think blocks, and both
chained, fed whole and split across every possible pair of deltas (a stream may cut anywhere)."""

import pytest

from gateway.assistant_output import AssistantOutputSplitter, OutputSyntax, output_syntax
from gateway.output_pieces import CallPiece, OutputPiece, ReasoningPiece, TextPiece
from gateway.reasoning_split import ReasoningSplitter
from gateway.tokenization import ModelTokenizer
from gateway.tool_call_parsing import (
    HermesToolCallParser,
    Llama3JsonToolCallParser,
    ToolCallParser,
    tool_call_format,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

WEATHER = CallPiece(name="get_weather", arguments={"city": "Paris", "days": 2})


def _merged(pieces: list[OutputPiece]) -> list[OutputPiece]:
    merged: list[OutputPiece] = []
    for piece in pieces:
        previous = merged[-1] if merged else None
        if isinstance(piece, TextPiece) and isinstance(previous, TextPiece):
            merged[-1] = TextPiece(previous.text + piece.text)
        elif isinstance(piece, ReasoningPiece) and isinstance(previous, ReasoningPiece):
            merged[-1] = ReasoningPiece(previous.text + piece.text)
        else:
            merged.append(piece)
    return merged


def _run_tool_parser(
    make: type[HermesToolCallParser] | type[Llama3JsonToolCallParser], deltas: list[str]
) -> list[OutputPiece]:
    parser: ToolCallParser = make()
    pieces: list[OutputPiece] = []
    for delta in deltas:
        pieces.extend(parser.feed(delta))
    pieces.extend(parser.finish())
    return _merged(pieces)


def _every_split(text: str) -> list[list[str]]:
    """The text whole, one character at a time, and cut at every position in two."""
    return [[text], list(text), *([text[:cut], text[cut:]] for cut in range(1, len(text)))]


HERMES_CASES: list[tuple[str, list[OutputPiece]]] = [
    ("Hello there.", [TextPiece("Hello there.")]),
    (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
        [WEATHER],
    ),
    (
        "Let me check.\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}\n</tool_call>\n',
        [TextPiece("Let me check."), WEATHER, CallPiece(name="get_time", arguments={"zone": "CET"})],
    ),
    # Unclosed at the end of the reply (it stopped at its end-of-turn token): still a call.
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}', [WEATHER]),
    # Not a call: the text comes back unchanged.
    ("<tool_call>{not json}</tool_call>", [TextPiece("<tool_call>{not json}</tool_call>")]),
    ('<tool_call>{"arguments": {}}', [TextPiece('<tool_call>{"arguments": {}}')]),
    ("a < b and <tool", [TextPiece("a < b and <tool")]),
    ("Trailing space stays without calls.  \n", [TextPiece("Trailing space stays without calls.  \n")]),
]


@pytest.mark.parametrize(("text", "expected"), HERMES_CASES)
def test_hermes_calls_across_every_split(text: str, expected: list[OutputPiece]) -> None:
    for deltas in _every_split(text):
        assert _run_tool_parser(HermesToolCallParser, deltas) == expected, deltas


LLAMA_CASES: list[tuple[str, list[OutputPiece]]] = [
    ('{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}', [WEATHER]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}', [WEATHER]),
    (
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}; {"name": "noop", "parameters": {}}',
        [WEATHER, CallPiece(name="noop", arguments={})],
    ),
    ("The weather is fine.", [TextPiece("The weather is fine.")]),
    ('{"answer": 42}', [TextPiece('{"answer": 42}')]),
    ('  {"name": "get_weather", "parameters": {"city"', [TextPiece('  {"name": "get_weather", "parameters": {"city"')]),
]


@pytest.mark.parametrize(("text", "expected"), LLAMA_CASES)
def test_llama3_json_calls_across_every_split(text: str, expected: list[OutputPiece]) -> None:
    for deltas in _every_split(text):
        assert _run_tool_parser(Llama3JsonToolCallParser, deltas) == expected, deltas


def test_plain_llama_text_streams_at_once() -> None:
    parser = Llama3JsonToolCallParser()
    assert parser.feed("The") == [TextPiece("The")]
    assert parser.feed(" answer") == [TextPiece(" answer")]


def test_hermes_text_streams_before_the_end() -> None:
    parser = HermesToolCallParser()
    assert parser.feed("Hello <to") == [TextPiece("Hello")]
    assert parser.feed("day") == [TextPiece(" <today")]


REASONING_CASES: list[tuple[str, bool, list[OutputPiece]]] = [
    (
        "<think>\nFrance's capital.\n</think>\n\nParis.",
        False,
        [ReasoningPiece("France's capital."), TextPiece("Paris.")],
    ),
    ("Just an answer with </think> inside.", False, [TextPiece("Just an answer with </think> inside.")]),
    ("Text before <think>is not reasoning</think>", False, [TextPiece("Text before <think>is not reasoning</think>")]),
    ("\nI think so.\n</think>\n\nYes.", True, [ReasoningPiece("I think so."), TextPiece("Yes.")]),
    ("<think>cut short by max_tokens", False, [ReasoningPiece("cut short by max_tokens")]),
    ("<thi", False, [TextPiece("<thi")]),
    ("<think></think>Answer", False, [TextPiece("Answer")]),
]


@pytest.mark.parametrize(("text", "starts_in_reasoning", "expected"), REASONING_CASES)
def test_reasoning_across_every_split(text: str, starts_in_reasoning: bool, expected: list[OutputPiece]) -> None:
    for deltas in _every_split(text):
        splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
        pieces: list[OutputPiece] = []
        for delta in deltas:
            pieces.extend(splitter.feed(delta))
        pieces.extend(splitter.finish())
        assert _merged(pieces) == expected, deltas


def test_reasoning_then_a_call_chained() -> None:
    text = (
        "<think>The user wants the weather.</think>\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
    )
    syntax = OutputSyntax(reasoning=True, starts_in_reasoning=False, tool_calls="hermes")
    for deltas in _every_split(text):
        splitter = AssistantOutputSplitter(syntax)
        pieces: list[OutputPiece] = []
        for delta in deltas:
            pieces.extend(splitter.feed(delta))
        pieces.extend(splitter.finish())
        assert _merged(pieces) == [ReasoningPiece("The user wants the weather."), WEATHER], deltas


def test_formats_and_syntax_from_templates() -> None:
    assert tool_call_format("{{ '<tool_call>' }}{% if tools %}{% endif %}") == "hermes"
    assert tool_call_format("<|start_header_id|>{% if tools %}<|python_tag|>{% endif %}") == "llama3_json"
    assert tool_call_format("{{ message['content'] }}") is None
    syntax = output_syntax("{{ '<think>' }}", "<|im_start|>assistant\n<think>\n", None)
    assert syntax.reasoning and syntax.starts_in_reasoning and syntax.tool_calls is None
    assert output_syntax("plain", "<|im_start|>assistant\n", None).is_plain


HARMONY_CASES: list[tuple[str, list[OutputPiece]]] = [
    (
        "<|channel|>analysis<|message|>The user asks for Paris.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Paris.",
        [ReasoningPiece("The user asks for Paris."), TextPiece("Paris.")],
    ),
    (
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}',
        [ReasoningPiece("Need the weather."), CallPiece(name="get_weather", arguments={"city": "Paris"})],
    ),
    (
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|end|>',
        [CallPiece(name="get_weather", arguments={"city": "Paris"})],
    ),
    ("Plain text without any header.", [TextPiece("Plain text without any header.")]),
    (
        "<|channel|>commentary to=functions.get_weather<|message|>{broken",
        [TextPiece("{broken")],
    ),
]


@pytest.mark.parametrize(("text", "expected"), HARMONY_CASES)
def test_harmony_across_every_split(text: str, expected: list[OutputPiece]) -> None:
    syntax = output_syntax("{{ '<|channel|>' }}{% if tools %}{% endif %}", "<|start|>assistant", "harmony")
    assert syntax.harmony and syntax.tool_calls == "harmony"
    for deltas in _every_split(text):
        splitter = AssistantOutputSplitter(syntax)
        pieces: list[OutputPiece] = []
        for delta in deltas:
            pieces.extend(splitter.feed(delta))
        pieces.extend(splitter.finish())
        assert _merged(pieces) == expected, deltas


def test_harmony_detection_and_special_tokens_kept(model_tokenizer: ModelTokenizer) -> None:
    assert tool_call_format("<|start|>{% if tools %}<|channel|>commentary{% endif %}") == "harmony"
    ids = model_tokenizer.encode_text("<|im_start|>Hello")
    assert model_tokenizer.decode(ids) == "Hello"
    assert model_tokenizer.decode(ids, keep_special_tokens=True) == "<|im_start|>Hello"
    detokenizer = model_tokenizer.detokenizer(keep_special_tokens=True)
    assert "".join(detokenizer.add(token_id) for token_id in ids) + detokenizer.flush() == "<|im_start|>Hello"
