"""Grammars that constrain a generation's output (structured output), built by the gateway's dialects.

A dialect turns `response_format` (OpenAI chat and completions), `text.format` (Responses) or
`format` (Ollama) into an `OutputGrammar`; the tools dialects use `json_value_grammar` to force a
tool call's arguments. Building one is string formatting only (cheap, fine on the event loop).
`compile_output_grammar` checks it and turns it into the llguidance grammar that travels to the
last shard (`SamplingOptions.grammar`); it compiles JSON schemas, so the completion engine calls it
from a worker thread, and raises `OutputGrammarError` for a schema or grammar llguidance refuses
(the completion engine reports it as an `InvalidRequestError`: HTTP 400 in every dialect).

The last shard masks every step's logits to the tokens the grammar allows (`shard_server/grammar_mask.py`);
once the grammar is complete and allows nothing but the end of sequence, the model can only end.
"""

import json
from collections.abc import Mapping, Sequence

import llguidance
from pydantic import BaseModel, ConfigDict

from services.wire.grammar_validation import grammar_problem

JsonSchema = Mapping[str, object] | bool
"""A JSON schema as decoded from the request: an object, or `true` (anything) / `false` (nothing)."""

ANY_JSON_OBJECT: JsonSchema = {"type": "object"}
"""OpenAI's `json_object` and Ollama's `format: "json"`: some JSON object, nothing more said."""


class OutputGrammarError(ValueError):
    """llguidance refused a schema or grammar; `param` and `code` as `InvalidRequestError` has them."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class OutputGrammar(BaseModel):
    """The output a request must produce, as Lark rules in llguidance's dialect whose top rule is `output`.

    `compile_output_grammar` adds the start rule: `output`, then one of the model's stop tokens, so
    the request ends (finish "stop") right after the text is complete.

    `json_schema_text` is the JSON schema the grammar embeds, when it embeds one (checked on its own
    first, so a bad schema's error names the schema, not a grammar position).
    """

    model_config = ConfigDict(frozen=True, strict=True)

    lark: str
    json_schema_text: str | None = None
    param: str
    """The request field it came from, named in errors (`response_format`, `text.format`, `format`, `tools`)."""


def json_value_grammar(
    schema: JsonSchema, *, prefix: str = "", suffix: str = "", param: str = "response_format"
) -> OutputGrammar:
    """A JSON value matching `schema`, wrapped in the literal text `prefix` and `suffix`.

    Signature: `json_value_grammar(schema, *, prefix="", suffix="", param="response_format") -> OutputGrammar`.
    - `schema`: a JSON schema (a mapping as decoded from JSON, or True / False);
      `ANY_JSON_OBJECT` for "some JSON object".
    - `prefix`, `suffix`: text the output must start and end with, exactly (e.g. `<tool_call>\\n`
      and `\\n</tool_call>` around a tool call's JSON); matched as text, so the model's tokens must
      spell it (a prefix that the tokenizer only has as one special token is not matched by it).
    - `param`: the request field named when the schema is refused.
    The JSON is written compactly, with no whitespace outside strings beyond `", "` and `": "`
    (llguidance's default); after the suffix the model can only end. Nothing is checked here:
    `compile_output_grammar` does that (put the result on `TextGenerationRequest.grammar`).
    """
    json_schema_text = json.dumps(schema, ensure_ascii=False)
    parts = [json.dumps(prefix, ensure_ascii=False)] if prefix else []
    parts.append("value")
    if suffix:
        parts.append(json.dumps(suffix, ensure_ascii=False))
    lark = f"output: {' '.join(parts)}\nvalue: %json {json_schema_text}\n"
    return OutputGrammar(lark=lark, json_schema_text=json_schema_text, param=param)


def compile_output_grammar(grammar: OutputGrammar, stop_token_ids: Sequence[int] = ()) -> str:
    """The llguidance grammar the last shard matches: `grammar.output`, then one of `stop_token_ids`
    (the model's end-of-sequence ids, which end the request; none: the tokenizer's own EOS ends it).
    Raises `OutputGrammarError` when llguidance refuses the schema or the grammar.

    Compiles the schema (llguidance drops the GIL for it, but it is CPU work): call it from a worker thread.
    """
    if grammar.json_schema_text is not None:
        try:
            schema_grammar = llguidance.LLMatcher.grammar_from_json_schema(grammar.json_schema_text)
        except ValueError as error:
            problem = str(error)
        else:
            problem = grammar_problem(schema_grammar)
        if problem is not None:
            raise OutputGrammarError(
                f"Invalid JSON schema for {grammar.param}: {problem}", param=grammar.param, code="invalid_json_schema"
            )
    ends = " | ".join(f"<[{token_id}]>" for token_id in sorted(set(stop_token_ids)))
    start = f"start: output end_of_sequence\nend_of_sequence: {ends}\n" if ends else "start: output\n"
    compiled = llguidance.LLMatcher.grammar_from_lark(start + grammar.lark)
    problem = grammar_problem(compiled)
    if problem is not None:
        raise OutputGrammarError(
            f"Invalid output grammar for {grammar.param}: {problem}", param=grammar.param, code="invalid_grammar"
        )
    return compiled
