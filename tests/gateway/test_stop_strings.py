"""StopStringMatcher: nothing that might start a stop string leaks, and a match cuts the text."""

import pytest

from gateway.tokenization import StopStringMatcher

pytestmark = pytest.mark.unit


def run(stop_strings: list[str], deltas: list[str]) -> tuple[str, str | None, list[str]]:
    """Returns the emitted text, the matched stop string, and what each feed released."""
    matcher = StopStringMatcher(stop_strings)
    released: list[str] = []
    for delta in deltas:
        scan = matcher.feed(delta)
        released.append(scan.text)
        if scan.matched is not None:
            return "".join(released), scan.matched, released
    released.append(matcher.flush())
    return "".join(released), None, released


def test_without_stop_strings_text_passes_through() -> None:
    assert run([], ["Hel", "lo"]) == ("Hello", None, ["Hel", "lo", ""])


def test_stop_string_inside_one_delta_cuts_there() -> None:
    assert run(["END"], ["abcENDdef"])[:2] == ("abc", "END")


def test_stop_string_split_across_deltas_is_never_emitted() -> None:
    text, matched, released = run(["</answer>"], ["The answer is 42<", "/ans", "wer> and more"])
    assert (text, matched) == ("The answer is 42", "</answer>")
    assert released == ["The answer is 42", "", ""]


def test_partial_prefix_is_released_once_it_cannot_match() -> None:
    text, matched, released = run(["STOP"], ["abc ST", "ART here"])
    assert matched is None
    assert text == "abc START here"
    assert released[0] == "abc "  # "ST" held back: it could have become "STOP"


def test_held_text_is_flushed_at_the_end() -> None:
    assert run(["STOP"], ["abc ST"]) == ("abc ST", None, ["abc ", "ST"])


def test_earliest_of_several_stop_strings_wins() -> None:
    assert run(["world", "lo w"], ["hello world"])[:2] == ("hel", "lo w")


def test_multi_character_unicode_stop_strings() -> None:
    assert run(["😀🎉"], ["日本", "語😀", "🎉 after"])[:2] == ("日本語", "😀🎉")


def test_nothing_is_emitted_after_a_match() -> None:
    matcher = StopStringMatcher(["x"])
    assert matcher.feed("axb").matched == "x"
    assert matcher.feed("more").text == ""
    assert matcher.flush() == ""


@pytest.mark.parametrize("split", range(1, 12))
def test_every_split_point_gives_the_same_result(split: int) -> None:
    text = "one two<|end|>three"
    assert run(["<|end|>"], [text[:split], text[split:]])[:2] == ("one two", "<|end|>")
