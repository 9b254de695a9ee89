"""PocketsphinxEngine on real (flite) speech: key words, WER, word timings, silence, bad input; transcribe_long."""

from __future__ import annotations

import numpy as np
import pytest

from processors.audio import STT_DITHER_DBFS, STT_SAMPLE_RATE
from processors.pocketsphinx_stt import PocketsphinxEngine, dither_digital_silence
from processors.stt_engine import STTEngine, STTInputError, Transcript, transcribe_long
from testkit.clips import clip_names, manifest_entry, speech
from testkit.transcripts import wer, words_of

from ..stt_words import KEY_WORDS


@pytest.fixture(scope="module")
def speech_manifest() -> dict[str, dict]:
    return {name: manifest_entry(name) for name in clip_names("flite_")}


@pytest.fixture(scope="module")
def engine() -> PocketsphinxEngine:
    return PocketsphinxEngine()  # one per "session", as documented


def test_key_words_and_wer_on_flite_speech(engine, speech_manifest):
    assert set(speech_manifest) == set(KEY_WORDS)
    errors = total = 0
    compute = audio = 0.0
    for name, keys in KEY_WORDS.items():
        t = engine.transcribe(speech(name))
        assert isinstance(t, Transcript) and t.language == "en"
        found = words_of(t.text)
        for key in keys:
            assert key in found, f"{name}: {key!r} not in {t.text!r}"
        e, n = wer(speech_manifest[name]["text"], t.text)
        errors, total = errors + e, total + n
        compute, audio = compute + t.compute_seconds, audio + t.audio_seconds
    assert errors / total <= 0.25  # measured 5-7 / 61 words (8-11 %)
    assert compute / audio < 1.0  # measured RTF 0.13-0.6 on a loaded 2-core CPU


def test_word_timings_follow_the_audio(engine):
    audio = speech("flite_weather_kal16.wav")
    padded = np.concatenate([np.zeros(STT_SAMPLE_RATE, np.float32), audio])
    plain, shifted = engine.transcribe(audio), engine.transcribe(padded)
    assert [w.word for w in plain.words] == words_of(plain.text)
    for w in plain.words:
        assert 0.0 <= w.start_s < w.end_s <= plain.audio_seconds
    starts = [w.start_s for w in plain.words]
    assert starts == sorted(starts)
    first = {w.word: w.start_s for w in plain.words}
    moved = {w.word: w.start_s for w in shifted.words}
    assert moved["weather"] - first["weather"] == pytest.approx(1.0, abs=0.08)


def test_digital_silence_decodes_as_nothing(engine):
    silent = engine.transcribe(np.zeros(2 * STT_SAMPLE_RATE, np.float32))
    assert silent.text == "" and silent.audio_seconds == 2.0 and silent.compute_seconds == 0.0
    assert engine.transcribe(np.zeros(0, np.float32)).is_empty


def test_dither_fills_only_runs_of_zeros():
    audio = np.full(4000, 0.2, np.float32)
    audio[100] = 0.0  # a lone zero crossing inside "speech"
    audio[1000:2000] = 0.0  # 62 ms of digital silence
    out = dither_digital_silence(audio)
    assert out[100] == 0.0 and np.all(out[:1000][np.arange(1000) != 100] == 0.2)
    rms = float(np.sqrt(np.mean(out[1000:2000] ** 2)))
    assert 20 * np.log10(rms) == pytest.approx(STT_DITHER_DBFS, abs=1.0)
    assert np.array_equal(out, dither_digital_silence(audio))  # deterministic
    assert audio[1500] == 0.0  # input untouched


def test_bad_input(engine):
    with pytest.raises(STTInputError, match="float32"):
        engine.transcribe(np.zeros(1600, np.int16))
    with pytest.raises(STTInputError, match="NaN"):
        engine.transcribe(np.array([0.1, np.nan], np.float32))
    with pytest.raises(STTInputError, match="16000 Hz"):
        engine.transcribe(np.zeros(800, np.float32), 8000)


def test_transcribe_long_splits_and_keeps_the_clock(engine):
    first, second = speech("flite_weather_kal16.wav"), speech("flite_table_rms.wav")
    gap = np.zeros(int(0.3 * STT_SAMPLE_RATE), np.float32)
    audio = np.concatenate([first, gap, second])
    limit = (first.size + gap.size // 2) / STT_SAMPLE_RATE + 0.1  # forces one cut, inside the gap
    t = transcribe_long(engine, audio, max_seconds=limit)
    found = words_of(t.text)
    assert {"weather", "paris", "table", "tonight"} <= set(found)
    assert t.audio_seconds == pytest.approx(audio.size / STT_SAMPLE_RATE)
    table = next(w for w in t.words if w.word == "table")
    assert table.start_s > first.size / STT_SAMPLE_RATE  # second piece's words are on the whole audio's clock


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, STTEngine)
    assert engine.name == "pocketsphinx"


def test_sessions_on_one_decoder_decode_as_their_own_decoders_would():
    """Voice sessions share the process's decoder, each with its own channel normalisation (cepstral mean): two
    sessions interleaved on one engine hear what two engines of their own hear (a session's first utterance exactly;
    later ones the same words, word times within 20 ms), and neither colours the other."""
    names = ["flite_story_slt.wav", "flite_table_rms.wav", "flite_weather_kal16.wav"]
    other = ["flite_lights_slt.wav", "flite_pizza_kal16.wav", "flite_meeting_rms.wav"]
    shared = PocketsphinxEngine()
    a, b = shared.session(), shared.session()
    alone_a, alone_b = PocketsphinxEngine(), PocketsphinxEngine()
    for i, (x, y) in enumerate(zip(names, other)):
        for session, alone, name in ((a, alone_a, x), (b, alone_b, y)):
            got, want = session.transcribe(speech(name)), alone.transcribe(speech(name))
            assert got.text == want.text, name
            if i == 0:
                assert got.words == want.words, name
            for g, w in zip(got.words, want.words):
                assert abs(g.start_s - w.start_s) <= 0.02 and abs(g.end_s - w.end_s) <= 0.02, (name, g, w)
    assert a._channel.cmn != b._channel.cmn  # the two channels really differ
    fresh = shared.session()  # a new session starts from the model's initial mean, like a new decoder
    assert fresh._channel.cmn == PocketsphinxEngine()._own.cmn
    assert isinstance(a, STTEngine) and a.name == "pocketsphinx" and a.holds_gil


def test_streams_of_sessions_at_once_take_a_decoder_each_and_give_it_back():
    """Two sessions decoding live at the same moment each hold a decoder of the pool (neither waits for the other's
    utterance to end); sessions one after another reuse the same decoder, so the pool does not grow with sessions.
    Each session's first live utterance hears exactly what a decoder of its own hears."""
    engine = PocketsphinxEngine()
    a, b = engine.session(), engine.session()
    x, y = speech("flite_story_slt.wav"), speech("flite_lights_slt.wav")
    sa, sb = a.open_stream(), b.open_stream()
    half = STT_SAMPLE_RATE // 2
    for i in range(0, max(x.size, y.size), half):  # interleaved, piece by piece, in one thread: no lock held across
        if i < x.size:
            sa.feed(x[i : i + half])
        if i < y.size:
            sb.feed(y[i : i + half])
    got_a, got_b = sa.finish(), sb.finish()
    assert engine.decoders == 2
    for audio, got in ((x, got_a), (y, got_b)):
        alone = PocketsphinxEngine().open_stream()
        for i in range(0, audio.size, half):
            alone.feed(audio[i : i + half])
        assert got.text == alone.finish().text
    for _ in range(5):  # later sessions, one after another: the pool's decoders again
        s = engine.session()
        stream = s.open_stream()
        stream.feed(x)
        assert stream.finish().text
        s.transcribe(y)
    assert engine.decoders == 2
    closed = engine.session().open_stream()
    closed.feed(x[:half])
    closed.close()  # a stream closed mid-utterance gives its decoder back too
    engine.transcribe(y)
    assert engine.decoders == 2
