"""Grammar masks on the last shard: allowed tokens only, EOS once complete, replay, the batched fast path."""

import json
from pathlib import Path

import llguidance
import mlx.core as mx
import pytest

from gateway.output_grammar import compile_output_grammar, json_value_grammar
from services.kernel.ids import RequestId
from services.kernel.sampling import SamplingOptions
from services.models.model_config import read_model_config
from services.platform.mlx_typing import to_bool_list
from services.platform.tensor_codec import EncodedTensor
from shard_server.grammar_mask import GrammarError, GrammarMatcher, GrammarVocabulary, grammar_matcher
from shard_server.ring_messages import BatchStep, Segment
from shard_server.sampler import RequestSampler, sample_rows
from shard_server.wire import WireError, ring_message_from_pb, ring_message_to_pb, start_request_from_pb
from strata_wire import common_pb2, shard_pb2
from tests.gateway.tiny_tokenizer import build_model_directory

pytestmark = pytest.mark.unit

PADDING_ROWS = 5
"""Logit rows past the tokenizer's vocabulary (models pad their heads): never allowed."""
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 8}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory: pytest.TempPathFactory) -> GrammarVocabulary:
    directory = build_model_directory(tmp_path_factory.mktemp("grammar-model"))
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] += PADDING_ROWS
    (directory / "config.json").write_text(json.dumps(config))
    return GrammarVocabulary(directory, read_model_config(directory))


@pytest.fixture(scope="module")
def grammar() -> str:
    return compile_output_grammar(json_value_grammar(SCHEMA))


def tokens_of(vocabulary: GrammarVocabulary, text: str) -> list[int]:
    return vocabulary.tokenizer.tokenize_str(text)


def allowed_tokens(matcher: GrammarMatcher) -> set[int]:
    return {token for token, allowed in enumerate(to_bool_list(matcher.allowed())) if allowed}


def eos_tokens(vocabulary: GrammarVocabulary) -> set[int]:
    return set(vocabulary.tokenizer.eos_tokens)


def random_logits(vocabulary: GrammarVocabulary, rows: int, seed: int) -> mx.array:
    return 4.0 * mx.random.normal((1, rows, vocabulary.vocab_size), key=mx.random.key(seed))  # (1, rows, vocab)


def test_the_mask_allows_what_the_grammar_allows_then_only_eos(vocabulary: GrammarVocabulary, grammar: str) -> None:
    matcher = GrammarMatcher(vocabulary, grammar)
    allowed = allowed_tokens(matcher)
    assert allowed
    assert all(vocabulary.tokenizer.decode_str([token]).startswith("{") for token in allowed)
    assert not allowed & set(range(vocabulary.vocab_size - PADDING_ROWS, vocabulary.vocab_size))
    for token in tokens_of(vocabulary, json.dumps({"answer": "Paris", "sure": True})):
        assert token in allowed_tokens(matcher)
        matcher.advance(token)
    assert allowed_tokens(matcher) == eos_tokens(vocabulary)


def test_masked_logits_are_minus_infinity_outside_the_grammar(vocabulary: GrammarVocabulary, grammar: str) -> None:
    matcher = GrammarMatcher(vocabulary, grammar)
    logits = random_logits(vocabulary, 1, seed=3)[0]  # (1, vocab)
    masked = matcher.mask(logits)
    allowed = to_bool_list(matcher.allowed())
    kept = to_bool_list(mx.isfinite(masked)[0])
    assert kept == allowed
    assert mx.array_equal(matcher.mask(masked), masked)  # masking twice changes nothing


def test_sampled_tokens_always_spell_valid_json(vocabulary: GrammarVocabulary, grammar: str) -> None:
    for seed in range(5):
        sampler = RequestSampler(SamplingOptions(temperature=1.0, seed=seed), GrammarMatcher(vocabulary, grammar))
        tokens: list[int] = []
        for step in range(200):
            token = sampler.sample(random_logits(vocabulary, 1, seed=1000 * seed + step))
            if token in eos_tokens(vocabulary):
                break
            tokens.append(token)
        else:
            pytest.fail("the grammar never completed")
        document = json.loads(vocabulary.tokenizer.decode_str(tokens))
        assert set(document) == {"answer", "sure"}
        assert len(document["answer"]) <= 8


def test_batched_greedy_rows_with_grammars_pick_what_each_sampler_alone_picks(
    vocabulary: GrammarVocabulary, grammar: str
) -> None:
    options = [SamplingOptions(), SamplingOptions(), SamplingOptions(temperature=0.8, seed=4), SamplingOptions()]
    has_grammar = [True, False, True, True]

    def samplers() -> list[RequestSampler]:
        return [
            RequestSampler(option, GrammarMatcher(vocabulary, grammar) if constrained else None)
            for option, constrained in zip(options, has_grammar, strict=True)
        ]

    batched, alone = samplers(), samplers()
    for step in range(12):
        logits = random_logits(vocabulary, len(options), seed=step)
        together = sample_rows(batched, logits)
        apart = [sampler.sample(logits[:, row : row + 1]) for row, sampler in enumerate(alone)]
        assert together == apart


def test_a_replay_advances_the_matcher_with_the_journal_tokens(vocabulary: GrammarVocabulary, grammar: str) -> None:
    journal = tokens_of(vocabulary, '{"answer": "Tok')
    replaying = GrammarMatcher(vocabulary, grammar, journal)
    for _ in journal:
        replaying.advance(eos_tokens(vocabulary).pop())  # what the step sampled is not what the text has
    original = GrammarMatcher(vocabulary, grammar)
    for token in journal:
        original.advance(token)
    assert allowed_tokens(replaying) == allowed_tokens(original)
    assert allowed_tokens(original) != eos_tokens(vocabulary)


def test_a_refused_grammar_or_a_missing_tokenizer_is_a_grammar_error(
    vocabulary: GrammarVocabulary, tmp_path: Path
) -> None:
    with pytest.raises(GrammarError, match="refused"):
        GrammarMatcher(vocabulary, "start: (((")
    no_tokenizer = build_model_directory(tmp_path / "model")
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(GrammarError, match=r"tokenizer\.json"):
        grammar_matcher('start: "x"', GrammarVocabulary(no_tokenizer, read_model_config(no_tokenizer)))
    assert grammar_matcher(None, None) is None


def test_the_first_shard_refuses_a_malformed_grammar() -> None:
    request = shard_pb2.GenerateRequest(
        request_id="r",
        prompt_tokens=[1, 2],
        max_tokens=4,
        sampling=common_pb2.SamplingParams(grammar='start: "unclosed'),
    )
    with pytest.raises(WireError, match="grammar refused"):
        start_request_from_pb(request)
    request.sampling.grammar = compile_output_grammar(json_value_grammar(SCHEMA))
    assert start_request_from_pb(request).sampling.grammar == request.sampling.grammar


def test_a_segment_carries_the_grammar_and_the_journal_to_the_last_shard() -> None:
    llguidance_grammar = compile_output_grammar(json_value_grammar(True))
    segment = Segment(
        RequestId("r-r1"),
        0,
        3,
        True,
        SamplingOptions(grammar=llguidance_grammar),
        grammar_replay_tokens=(7, 8, 9),
    )
    hidden = EncodedTensor(dtype="float32", shape=(1, 3, 1), data=bytes(12))
    decoded = ring_message_from_pb(ring_message_to_pb(BatchStep((segment,), hidden)))
    assert isinstance(decoded, BatchStep)
    assert decoded.segments == (segment,)
    assert llguidance.LLMatcher.validate_grammar(llguidance_grammar) == ""
