"""Output grammars: JSON values (with literal prefix and suffix) compiled by llguidance, and refusals."""

import json

import llguidance
import pytest

from gateway.output_grammar import ANY_JSON_OBJECT, OutputGrammarError, compile_output_grammar, json_value_grammar
from tests.gateway.tiny_tokenizer import END_OF_TEXT, train_byte_level_bpe

pytestmark = pytest.mark.unit

TOOL_ARGUMENTS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer() -> llguidance.LLTokenizer:
    """A tiny byte-level BPE: any text is spelled by its byte tokens."""
    trained = train_byte_level_bpe()
    return llguidance.LLTokenizer(trained.to_str(), eos_token=trained.token_to_id(END_OF_TEXT))


def accepts(tokenizer: llguidance.LLTokenizer, compiled: str, text: str) -> bool:
    """Whether the grammar takes exactly `text` and then allows only the end of sequence."""
    matcher = llguidance.LLMatcher(tokenizer, compiled, log_level=0)
    return matcher.consume_tokens(tokenizer.tokenize_str(text)) and matcher.is_stopped() and not matcher.is_error()


def test_a_json_value_wrapped_in_literal_text(tokenizer: llguidance.LLTokenizer) -> None:
    prefix, suffix = '<tool_call>\n{"name": "weather", "arguments": ', "}\n</tool_call>"
    compiled = compile_output_grammar(json_value_grammar(TOOL_ARGUMENTS, prefix=prefix, suffix=suffix))
    arguments = json.dumps({"city": "Paris", "days": 3})
    assert accepts(tokenizer, compiled, prefix + arguments + suffix)
    assert not accepts(tokenizer, compiled, arguments)
    assert not accepts(tokenizer, compiled, prefix + json.dumps({"city": "Paris"}) + suffix)


def test_literal_text_is_escaped_for_lark(tokenizer: llguidance.LLTokenizer) -> None:
    prefix, suffix = 'quote " backslash \\ tab\t é\n', "\n✓ end"
    compiled = compile_output_grammar(json_value_grammar(True, prefix=prefix, suffix=suffix))
    assert accepts(tokenizer, compiled, prefix + "[1, null]" + suffix)


def test_any_json_object(tokenizer: llguidance.LLTokenizer) -> None:
    compiled = compile_output_grammar(json_value_grammar(ANY_JSON_OBJECT))
    assert accepts(tokenizer, compiled, '{"a": [1, 2.5, "x"], "b": {"c": null}}')
    assert not accepts(tokenizer, compiled, "[1, 2]")


def test_the_output_ends_with_one_of_the_stop_tokens(tokenizer: llguidance.LLTokenizer) -> None:
    stop_token_ids = (1, 2)
    compiled = compile_output_grammar(json_value_grammar(ANY_JSON_OBJECT), stop_token_ids)
    matcher = llguidance.LLMatcher(tokenizer, compiled, log_level=0)
    assert matcher.consume_tokens(tokenizer.tokenize_str('{"a": 1}'))
    assert not matcher.is_accepting()
    assert matcher.validate_tokens([2]) == 1 and matcher.validate_tokens([0]) == 0
    assert matcher.consume_token(2) and matcher.is_stopped()


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "nope"}, "Invalid type"),
        ({"$ref": "#/definitions/missing"}, "does not exist"),
        ({"type": "string", "pattern": "(("}, "regex"),
    ],
)
def test_a_bad_schema_is_refused_naming_the_field(schema: dict[str, object], reason: str) -> None:
    with pytest.raises(OutputGrammarError) as refused:
        compile_output_grammar(json_value_grammar(schema, param="text.format"))
    assert refused.value.param == "text.format"
    assert refused.value.code == "invalid_json_schema"
    assert reason in refused.value.message
    assert refused.value.message.startswith("Invalid JSON schema for text.format: ")
