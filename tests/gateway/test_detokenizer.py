"""IncrementalDetokenizer: deltas never break a character, and add up to the one-shot decode."""

import random
from collections.abc import Callable, Sequence

import pytest
from tokenizers import Tokenizer

from gateway.tokenization import REPLACEMENT_CHARACTER, IncrementalDetokenizer, ModelTokenizer
from tests.gateway.tiny_tokenizer import build_sentencepiece_style_tokenizer, train_byte_level_bpe

pytestmark = pytest.mark.unit

TEXTS = (
    "Hello world! The quick brown fox.",
    "naïve café — résumé",
    "日本語のテキスト and 中文文本",
    "emoji 😀🎉 in the middle 👩‍👩‍👧 and at the end 🎉",
    "  leading spaces, tabs\tand\nnewlines  ",
    "\u1e9e\U0001d518\U0001d52b\U0001d526 (Fraktur) mixed 한국어",
)


def stream(decode: Callable[[Sequence[int]], str], token_ids: Sequence[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(decode)
    deltas = [detokenizer.add(token_id) for token_id in token_ids]
    deltas.append(detokenizer.flush())
    return deltas


@pytest.fixture(scope="module")
def byte_level() -> Tokenizer:
    return train_byte_level_bpe()


@pytest.fixture(scope="module")
def sentencepiece_style() -> Tokenizer:
    return build_sentencepiece_style_tokenizer()


def test_multi_byte_characters_really_split_across_tokens(byte_level: Tokenizer) -> None:
    """Guards the other tests: with this tiny vocabulary single tokens hold partial characters."""
    token_ids = byte_level.encode("日本語 😀🎉").ids
    assert any(REPLACEMENT_CHARACTER in byte_level.decode([token_id]) for token_id in token_ids)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_deltas_are_whole_characters_and_rebuild_the_text(byte_level: Tokenizer, text: str) -> None:
    token_ids = byte_level.encode(text).ids
    deltas = stream(byte_level.decode, token_ids)
    assert all(REPLACEMENT_CHARACTER not in delta for delta in deltas)
    assert "".join(deltas) == byte_level.decode(token_ids) == text


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_style_with_byte_fallback_and_leading_space(sentencepiece_style: Tokenizer, text: str) -> None:
    token_ids = sentencepiece_style.encode(text).ids
    four_byte_characters = any(len(character.encode()) == 4 for character in text)
    byte_tokens = {sentencepiece_style.id_to_token(token_id) for token_id in token_ids}
    assert ("<0xF0>" in byte_tokens) == four_byte_characters  # emoji really went through byte fallback
    deltas = stream(sentencepiece_style.decode, token_ids)
    assert all(REPLACEMENT_CHARACTER not in delta for delta in deltas)
    assert "".join(deltas) == sentencepiece_style.decode(token_ids)


def test_emoji_is_emitted_once_complete(byte_level: Tokenizer) -> None:
    token_ids = byte_level.encode("😀").ids
    assert len(token_ids) > 1
    deltas = stream(byte_level.decode, token_ids)
    assert deltas[:-2] == [""] * (len(token_ids) - 1)
    assert [delta for delta in deltas if delta] == ["😀"]


def test_flush_releases_an_incomplete_sequence_as_the_full_decode_does(byte_level: Tokenizer) -> None:
    token_ids = byte_level.encode("ok 😀").ids[:-1]  # drop the emoji's last byte token
    deltas = stream(byte_level.decode, token_ids)
    assert deltas[-1].endswith(REPLACEMENT_CHARACTER)
    assert "".join(deltas) == byte_level.decode(token_ids)


@pytest.mark.parametrize("seed", range(50))
def test_random_byte_level_ids_match_the_one_shot_decode(byte_level: Tokenizer, seed: int) -> None:
    """Arbitrary ids, invalid UTF-8 included: the concatenation still equals decoding at once."""
    generator = random.Random(seed)
    token_ids = [generator.randrange(byte_level.get_vocab_size()) for _ in range(80)]
    assert "".join(stream(byte_level.decode, token_ids)) == byte_level.decode(token_ids)


@pytest.mark.parametrize("seed", range(20))
def test_random_text_through_sentencepiece_style_matches_the_one_shot_decode(
    sentencepiece_style: Tokenizer, seed: int
) -> None:
    """Byte-fallback decoders turn each byte of an invalid group into U+FFFD, so later bytes can
    change earlier text: only well-formed output is comparable. Random characters give that."""
    generator = random.Random(seed)
    alphabet = "abc XYZ.,!éü日本語中文😀🎉👩‍👧한"
    text = "".join(generator.choice(alphabet) for _ in range(60))
    token_ids = sentencepiece_style.encode(text).ids
    assert "".join(stream(sentencepiece_style.decode, token_ids)) == sentencepiece_style.decode(token_ids)


def test_model_tokenizer_detokenizer_skips_special_tokens(model_tokenizer: ModelTokenizer) -> None:
    token_ids = model_tokenizer.encode_text("日本 😀 ok")
    eos = model_tokenizer.stop_token_ids[0]
    detokenizer = model_tokenizer.detokenizer()
    text = "".join(detokenizer.add(token_id) for token_id in [*token_ids, eos]) + detokenizer.flush()
    assert text == "日本 😀 ok" == model_tokenizer.decode([*token_ids, eos])
