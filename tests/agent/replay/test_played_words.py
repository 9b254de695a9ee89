"""After a barge-in the LLM context keeps the words that were played: checked against a measure the pipeline does not
produce. The words whose audio left the output transport are computed from the recorded output audio (how many
seconds of the reply were played) and the TTS engine's own per-word audio spans (espeak's word events for each
sentence of the reply, rendered again here by the same engine, voice and rate, one sentence per call and back to back
as the pipeline speaks them), never from the word timestamps the TTS adapter emits or the times the output transport
releases words at."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.replay import load_scenario, parse_scenario, replay
from processors.espeak_tts import EspeakEngine, split_sentences

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"
# one long sentence first, so that the barge-in lands deep inside a sentence
LONG_SENTENCE = (
    "It is sunny and warm in Paris today with a light breeze from the west and a few small clouds late in the "
    "afternoon so the terraces along the river will be full of people until the evening. Enjoy your walk."
)


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def word_starts(engine: EspeakEngine, text: str, rate: int | None) -> list[tuple[str, float]]:
    """(word, start seconds from the reply's first sample) for every word of ``text`` as the TTS speaks it: one
    sentence per engine call (the pipeline's sentence aggregation), back to back."""
    voice = engine.create_voice("English")
    gen = {"rate": rate} if rate else {}
    out: list[tuple[str, float]] = []
    offset = 0.0
    for sentence in split_sentences(text):
        samples = 0
        for chunk, words in engine.stream_timed(sentence, voice, "English", **gen):
            out += [(w, offset + t) for w, t in words]
            samples += len(chunk)
        offset += samples / engine.sample_rate
    return out


def played_seconds(result, before: float) -> float:
    """Seconds of bot audio the output transport played before ``before`` (replay time): the reply's audio."""
    return sum(len(audio) for start, audio in result.bot_audio if start < before) / result.sample_rate


def check_kept_words_were_played(result, reply: str, rate: int | None) -> tuple[list[str], list[str]]:
    second_reply = result.events_of("bot_started_speaking")[1]
    played_s = played_seconds(result, second_reply)
    starts = word_starts(EspeakEngine(), reply, rate)
    heard = [w for w, t in starts if t < played_s]
    kept = next(m["content"] for m in result.context if m["role"] == "assistant")
    print(
        f"\nplayed {played_s:.2f} s of the reply: {len(heard)} words started ({' '.join(heard)!r}); "
        f"the context keeps {len(kept.split())} ({kept!r})"
    )
    assert _words(reply)[: len(_words(kept))] == _words(kept), "the context keeps the reply's first words, in order"
    assert 0 < len(heard) < len(reply.split()), "the barge-in must cut the reply for the check to mean anything"
    assert abs(len(kept.split()) - len(heard)) <= 1, (
        f"the context keeps {len(kept.split())} words, {len(heard)} had started playing"
    )
    return kept.split(), heard


def test_barge_in_example_keeps_the_played_words():
    result = replay(EXAMPLES / "barge_in.yaml")
    check_kept_words_were_played(result, result.scenario.llm.scripted[0], result.scenario.tts.rate)


@pytest.mark.parametrize("offset_ms", [2600, 3900])
def test_barge_in_late_in_a_long_sentence(offset_ms):
    """The barge-in lands deep inside one long sentence, where the adapter's word times are its own estimate."""
    scenario = load_scenario(EXAMPLES / "barge_in.yaml")
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data["llm"]["scripted"] = [LONG_SENTENCE, "Sure, I will wait."]
    data["turns"][1]["offset_ms"] = offset_ms
    data["expect"] = [{"turn": 1, "interrupted": True}]
    result = replay(parse_scenario(data, base_dir=scenario.base_dir))
    kept, heard = check_kept_words_were_played(result, LONG_SENTENCE, scenario.tts.rate)
    assert len(heard) >= 8
