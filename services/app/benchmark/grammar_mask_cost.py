"""What a grammar costs per generated token on the last shard, on a stored model's own vocabulary.

Walks a JSON document that matches a schema token by token, as a constrained request would: each
step computes the grammar's mask (`GrammarMatcher.allowed`: llguidance's bitmask, unpacked into a
(vocab,) bool array), applies it to a row of logits (`mask`, evaluated) and consumes the token.
Prints the per-token time (median, p90, max over the walk, several walks) and the one-off costs:
building the tokenizer for llguidance (once per loaded stage) and the matcher (once per request).

`python -m services.app.benchmark.grammar_mask_cost [--model-dir DIR]` (default: the embedded
SmolLM2 in `$STRATA_HOME`'s store).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
from tokenizers import Tokenizer

from gateway.output_grammar import compile_output_grammar, json_value_grammar
from services.kernel.ids import ModelId
from services.kernel.settings import models_root, strata_home
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_config import read_model_config
from services.models.model_store import ModelStore
from services.platform.mlx_typing import evaluate
from shard_server.grammar_mask import GrammarMatcher, GrammarVocabulary

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "address", "active"],
    "additionalProperties": False,
}
DOCUMENT = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@example.org",
    "tags": ["math", "engines", "poetry"],
    "address": {"city": "London", "zip": "W1"},
    "active": True,
}
WALKS = 5


def measure(model_dir: Path) -> dict[str, object]:
    config = read_model_config(model_dir)
    grammar = compile_output_grammar(json_value_grammar(SCHEMA))
    tokens = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(json.dumps(DOCUMENT)).ids
    started = time.perf_counter()
    vocabulary = GrammarVocabulary(model_dir, config)
    _ = vocabulary.tokenizer
    tokenizer_seconds = time.perf_counter() - started
    logits = mx.random.normal((1, config.vocab_size), key=mx.random.key(0))  # (1, vocab)
    evaluate(logits)
    step_seconds: list[float] = []
    matcher_seconds: list[float] = []
    for _ in range(WALKS):
        started = time.perf_counter()
        matcher = GrammarMatcher(vocabulary, grammar)
        matcher_seconds.append(time.perf_counter() - started)
        for token in tokens:
            started = time.perf_counter()
            evaluate(matcher.mask(logits))
            matcher.advance(token)
            step_seconds.append(time.perf_counter() - started)
    ordered = sorted(step_seconds)
    return {
        "model_dir": str(model_dir),
        "vocab_size": config.vocab_size,
        "tokens_per_walk": len(tokens),
        "walks": WALKS,
        "per_token_median_us": round(statistics.median(ordered) * 1e6, 1),
        "per_token_p90_us": round(ordered[int(0.9 * len(ordered))] * 1e6, 1),
        "per_token_max_us": round(ordered[-1] * 1e6, 1),
        "tokenizer_build_ms": round(tokenizer_seconds * 1e3, 1),
        "matcher_build_median_ms": round(statistics.median(matcher_seconds) * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="What a grammar costs per generated token on the last shard.")
    parser.add_argument("--model-dir", type=Path, default=None)
    arguments = parser.parse_args()
    model_dir: Path = arguments.model_dir or ModelStore(models_root(strata_home())).model_dir(
        ModelId(EMBEDDED_MODEL_ID)
    )
    print(json.dumps(measure(model_dir), indent=2))


if __name__ == "__main__":
    main()
