"""Streaming Qwen3-TTS vs upstream qwen-tts on the same tiny random model: exact parity, seams, cancellation,
runaway guard and bad input. Greedy decoding (do_sample=False for talker and sub-talker) makes both deterministic.

Parity runs on the never-EOS variant capped by max_new_tokens, so every comparison covers the same, known number of
frames (random weights make the end token arbitrary); `test_stops_at_eos_like_upstream` covers the end token."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from processors.audio import CODEC_FRAME_SAMPLES
from processors.qwen3_tts import Qwen3TTSEngine, VoicePrompt
from processors.qwen3_tts.engine import frame_budget
from processors.tts_engine import InvalidTextError, UnsupportedLanguageError, VoiceError

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXT = "Hello there, this is a streaming test."
TOL = 1e-4


MAX_NEW = 41  # upstream emits max_new_tokens - 1 frames: 40 frames, 3.2 s


@pytest.fixture(scope="module")
def engine(tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)


@pytest.fixture(scope="module")
def reference():
    from testkit.qwen3_tts_model import make_reference_audio

    return make_reference_audio(seconds=4.0, sample_rate=24000, seed=1), 24000


@pytest.fixture(scope="module", params=["icl", "x_vector"])
def voice(request, engine, reference) -> VoicePrompt:
    if request.param == "icl":
        return engine.create_voice(reference, "A short reference sentence for cloning.")
    return engine.create_voice(reference, None)


def upstream(engine: Qwen3TTSEngine, voice: VoicePrompt, text: str, **gen) -> np.ndarray:
    """qwen-tts's own generate_voice_clone with the same prompt item."""
    wavs, sr = engine.tts_model.generate_voice_clone(
        text=text, language="English", voice_clone_prompt=[voice.prompt], **GREEDY, **gen
    )
    assert sr == 24000
    return np.asarray(wavs[0], dtype=np.float32)


@pytest.fixture(scope="module")
def upstream_wav(engine, voice):
    return upstream(engine, voice, TEXT, max_new_tokens=MAX_NEW)


def _aligned(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # upstream cuts the reference part with int(ref_len / total_len * samples), which can keep 1 extra sample
    extra = len(ref) - len(ours)
    assert 0 <= extra <= 1, (len(ours), len(ref))
    return ours, ref[extra:]


@pytest.mark.parametrize("first,every", [(1, 1), (2, 2), (4, 4), (8, 8), (1, 4)])
def test_stream_equals_upstream(engine, voice, upstream_wav, first, every):
    chunks = list(
        engine.stream(
            TEXT, voice, "english", first_chunk_frames=first, chunk_frames=every, max_new_tokens=MAX_NEW, **GREEDY
        )
    )
    ours, ref = _aligned(np.concatenate(chunks), upstream_wav)
    assert engine.last_stats.frames == MAX_NEW - 1 and len(ours) == (MAX_NEW - 1) * CODEC_FRAME_SAMPLES
    assert np.abs(ref).max() > 1e-3, "the tiny model must produce audible output for parity to mean anything"
    assert np.max(np.abs(ours - ref)) <= TOL
    # chunking: first chunk after `first` frames, then every `every` frames
    assert len(chunks[0]) == min(first, engine.last_stats.frames) * CODEC_FRAME_SAMPLES
    assert all(len(c) == every * CODEC_FRAME_SAMPLES for c in chunks[1:-1])


def test_no_discontinuity_at_seams(engine, voice, upstream_wav):
    chunks = list(
        engine.stream(TEXT, voice, "English", first_chunk_frames=1, chunk_frames=1, max_new_tokens=MAX_NEW, **GREEDY)
    )
    ours, ref = _aligned(np.concatenate(chunks), upstream_wav)
    seams = np.cumsum([len(c) for c in chunks])[:-1]
    for s in seams:
        window = slice(max(0, s - 8), s + 8)
        assert np.max(np.abs(ours[window] - ref[window])) <= TOL
        # the jump across the seam is no larger than upstream's own jump at that sample
        assert abs(abs(ours[s] - ours[s - 1]) - abs(ref[s] - ref[s - 1])) <= 2 * TOL


def test_synthesize_is_stream_concatenated(engine, voice, upstream_wav):
    ours, ref = _aligned(engine.synthesize(TEXT, voice, "English", max_new_tokens=MAX_NEW, **GREEDY), upstream_wav)
    assert np.max(np.abs(ours - ref)) <= TOL


def test_cancel_stops_within_one_frame(engine, voice):
    cancel = threading.Event()
    gen = engine.stream(TEXT, voice, "English", cancel, first_chunk_frames=1, chunk_frames=1, max_frames=500, **GREEDY)
    next(gen)
    frames_at_cancel = engine.last_stats.frames
    cancel.set()
    rest = list(gen)
    assert rest == []
    assert engine.last_stats.cancelled
    assert engine.last_stats.frames - frames_at_cancel <= 1


def test_cancel_from_another_thread_stops_worker(engine, voice):
    cancel = threading.Event()
    got: list[np.ndarray] = []

    def run():
        for chunk in engine.stream(TEXT * 3, voice, "English", cancel, chunk_frames=1, max_frames=400, **GREEDY):
            got.append(chunk)

    t = threading.Thread(target=run)
    t.start()
    while not got:
        time.sleep(0.005)
    cancel.set()
    t.join(timeout=5)
    assert not t.is_alive()
    assert engine.last_stats.cancelled


def test_stops_at_eos_like_upstream(tiny_qwen_dir, reference):
    eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_dir)
    for vp in (eng.create_voice(reference, "A short reference sentence for cloning."), eng.create_voice(reference)):
        ref = upstream(eng, vp, TEXT)
        ours, ref = _aligned(eng.synthesize(TEXT, vp, "English", **GREEDY), ref)
        assert not eng.last_stats.hit_budget and len(ours) == eng.last_stats.frames * CODEC_FRAME_SAMPLES
        assert np.max(np.abs(ours - ref)) <= TOL


def test_runaway_guard(engine, voice, caplog):
    eng, vp = engine, voice
    text = "Hi."
    wav = eng.synthesize(text, vp, "English", **GREEDY)
    assert eng.last_stats.hit_budget
    assert eng.last_stats.frames == frame_budget(text)
    assert len(wav) == frame_budget(text) * CODEC_FRAME_SAMPLES
    assert any("runaway guard" in r.getMessage() for r in caplog.records)
    # max_new_tokens is honoured too (upstream emits max_new_tokens - 1 frames)
    eng.synthesize(text, vp, "English", max_new_tokens=5, **GREEDY)
    assert eng.last_stats.frames == 4


@pytest.mark.parametrize("bad", ["", "   \n\t", "x" * 5000, None])
def test_bad_text(engine, voice, bad):
    with pytest.raises(InvalidTextError):
        engine.stream(bad, voice, "English")


def test_languages(engine, voice):
    assert len(engine.languages) == 10
    for lang in ("ENGLISH", "chinese", "Auto", "auto", "Spanish"):
        engine.stream("Hi.", voice, lang).close()
    with pytest.raises(UnsupportedLanguageError) as e:
        engine.stream("Hi.", voice, "Klingon")
    assert "English" in str(e.value) and "auto" in str(e.value)


def test_bad_reference(engine, tmp_path, reference):
    samples, sr = reference
    with pytest.raises(VoiceError, match="3-30 s"):
        engine.create_voice((samples[: sr * 2], sr), "too short")
    with pytest.raises(VoiceError, match="3-30 s"):
        engine.create_voice((np.tile(samples, 9), sr), "too long")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really audio" * 10)
    with pytest.raises(VoiceError, match="decode"):
        engine.create_voice(junk, "junk")
    with pytest.raises(VoiceError):
        engine.stream("Hi.", "not a voice", "English")


def test_voice_cache_memory_and_disk(engine, reference, tmp_path):
    samples, sr = reference
    # any sample rate: a 16 kHz copy of the reference works and is a different voice key
    import soxr

    ref16 = soxr.resample(samples, sr, 16000).astype(np.float32)
    a = engine.create_voice((ref16, 16000), "Reference at sixteen kilohertz.", cache_dir=tmp_path)
    b = engine.create_voice((ref16, 16000), "Reference at sixteen kilohertz.", cache_dir=tmp_path)
    assert a is b  # memory LRU
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".safetensors"]  # never pickle
    fresh = Qwen3TTSEngine(engine.tts_model, engine.model_id)  # empty memory cache, same disk cache
    c = fresh.create_voice((ref16, 16000), "Reference at sixteen kilohertz.", cache_dir=tmp_path)
    assert c is not a and c.key == a.key
    assert torch.equal(c.prompt.ref_code, a.prompt.ref_code)
    assert torch.allclose(c.prompt.ref_spk_embedding, a.prompt.ref_spk_embedding)
    assert c.mode == "icl" and engine.create_voice((ref16, 16000)).mode == "x_vector"
