"""The dialects' structured-output fields, decoded and turned into an `OutputGrammar`.

- OpenAI chat and completions, `response_format`: `{"type": "text"}` (no grammar),
  `{"type": "json_object"}` (some JSON object), `{"type": "json_schema", "json_schema": {"name",
  "description", "schema", "strict"}}` (a JSON value matching `schema`; none: any JSON value).
- OpenAI Responses, `text.format`: the same three, with the json_schema fields flattened into the
  format object (`{"type": "json_schema", "name", "schema", "strict"}`).
- Ollama, `format`: `"json"` (some JSON object) or a JSON schema object; `""` or absent: no grammar.

The output is always held to the schema, whatever `strict` says (strict or not, a grammar is the only
way a small model keeps to it). A schema llguidance refuses is answered with 400 in the dialect's
error shape, naming the field, when the request is prepared (`compile_output_grammar`).
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.output_grammar import ANY_JSON_OBJECT, JsonSchema, OutputGrammar, json_value_grammar

SchemaName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
"""OpenAI's rule for a json_schema's name."""


class _Format(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", populate_by_name=True)


class TextFormat(_Format):
    type: Literal["text"]

    def grammar(self, param: str) -> OutputGrammar | None:
        return None


class JsonObjectFormat(_Format):
    type: Literal["json_object"]

    def grammar(self, param: str) -> OutputGrammar | None:
        return json_value_grammar(ANY_JSON_OBJECT, param=param)


class JsonSchemaSpec(_Format):
    """What the JSON must match; `schema` is named `json_schema_object` here (BaseModel has a `schema`)."""

    name: SchemaName
    description: str | None = None
    json_schema_object: dict[str, object] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None

    def output_grammar(self, param: str) -> OutputGrammar:
        schema: JsonSchema = True if self.json_schema_object is None else self.json_schema_object
        return json_value_grammar(schema, param=param)


class JsonSchemaFormat(_Format):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec

    def grammar(self, param: str) -> OutputGrammar | None:
        return self.json_schema.output_grammar(param)


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
"""OpenAI chat and completions' `response_format`."""


class FlatJsonSchemaFormat(JsonSchemaSpec):
    """The Responses API's json_schema format: the spec's fields beside `type`."""

    type: Literal["json_schema"]

    def grammar(self, param: str) -> OutputGrammar | None:
        return self.output_grammar(param)


TextOutputFormat = Annotated[TextFormat | JsonObjectFormat | FlatJsonSchemaFormat, Field(discriminator="type")]
"""The Responses API's `text.format`."""


class ResponsesText(_Format):
    """The Responses API's `text` parameter."""

    format: TextOutputFormat | None = None

    def grammar(self) -> OutputGrammar | None:
        return self.format.grammar("text.format") if self.format is not None else None


OllamaFormat = Literal["", "json"] | dict[str, object] | None
"""Ollama's `format`: "json", a JSON schema object, or nothing."""


def ollama_format_grammar(value: OllamaFormat) -> OutputGrammar | None:
    if value is None or value == "":
        return None
    if value == "json":
        return json_value_grammar(ANY_JSON_OBJECT, param="format")
    return json_value_grammar(value, param="format")
