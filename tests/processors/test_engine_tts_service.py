"""``WordTimer``: the word starts the TTS adapter estimates for engines that do not report their own (Qwen3-TTS): each
word starts at its share of the characters (a word and its following space) of the utterance's audio, and is released
only once audio reaching its start exists. Engines that know their word starts (espeak) are covered with the recorded
output audio in ``tests/agent/replay/test_played_words.py``."""

from __future__ import annotations

import pytest

from processors.engine_tts_service import WordTimer


def approx(words: list[tuple[str, float]]):
    return [(w, pytest.approx(t)) for w, t in words]


def test_final_times_are_character_shares_of_the_audio():
    timer = WordTimer("one two three")  # 4 + 4 + 6 characters with their spaces
    assert timer.advance(1.4, final=True) == approx([("one", 0.0), ("two", 0.4), ("three", 0.8)])
    assert timer.advance(2.0, final=True) == []  # each word once


def test_words_wait_for_the_audio_that_reaches_them():
    """Before the end, the utterance is assumed to last at least ``seconds_per_char`` per character (14 x 0.065 s
    here), so a word is not released early just because little audio exists yet."""
    timer = WordTimer("one two three", seconds_per_char=0.065)
    assert timer.advance(0.1) == [("one", 0.0)]
    assert timer.advance(0.3) == approx([("two", 4 / 14 * 0.91)])
    assert timer.advance(0.5) == []  # "three" would start at 8/14 x 0.91 = 0.52 s
    got = timer.advance(1.4, final=True)
    assert got == approx([("three", 0.8)])


def test_times_never_go_backwards():
    timer = WordTimer("a bb ccc dddd", seconds_per_char=0.1)
    times = [t for _, t in timer.advance(1.0)] + [t for _, t in timer.advance(0.5, final=True)]
    assert times == sorted(times) and len(times) == 4
