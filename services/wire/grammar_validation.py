"""Whether llguidance accepts a grammar: the gateway checks what it sends, the first shard what it receives.

A grammar travels as llguidance's JSON form (`SamplingOptions.grammar`); this check needs no
tokenizer (the last shard builds the matcher with the model's own and fails the request if that
refuses it). It compiles the grammar: keep it off the event loop for large ones.
"""

import llguidance


def grammar_problem(compiled: str) -> str | None:
    """Why llguidance refuses the grammar, or None when it accepts it (warnings are not refusals)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled)
    return (messages[0] if messages else "the grammar was refused") if is_error else None
