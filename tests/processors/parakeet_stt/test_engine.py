"""ParakeetEngine on a tiny random Parakeet-TDT .nemo built offline with NeMo's own classes.

The text is meaningless (random weights); these tests check the NeMo plumbing: loading, eval mode, padding, word
timings, input validation, the hub code path, thread-safety.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from processors.parakeet_stt import ParakeetEngine
from processors.stt_engine import STTEngine, STTError, STTInputError, Transcript, Word

from ..stt_words import noise


def test_tiny_model_is_a_parakeet_tdt(parakeet_engine, tiny_nemo):
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    model = parakeet_engine.model
    assert isinstance(model, EncDecRNNTBPEModel)
    assert model.cfg.decoding.model_type == "tdt"
    assert list(model.cfg.decoding.durations) == [0, 1, 2, 3, 4]
    assert model.cfg.encoder.subsampling == "dw_striding" and model.cfg.encoder.subsampling_factor == 8
    assert model.tokenizer.vocab_size == 64
    assert not model.training
    assert parakeet_engine.device == "cpu"
    assert isinstance(parakeet_engine, STTEngine)
    assert tiny_nemo.stat().st_size < 5_000_000


def test_transcribe_returns_transcript_and_eval_mode(parakeet_engine):
    parakeet_engine.model.train()  # as restore_from leaves it; transcribe must not run or end in train mode
    t = parakeet_engine.transcribe(noise(2.0))
    assert isinstance(t, Transcript)
    assert not parakeet_engine.model.training
    assert isinstance(t.text, str) and t.language == "en"
    assert t.audio_seconds == pytest.approx(2.0)
    assert t.compute_seconds > 0 and t.rtf == pytest.approx(t.compute_seconds / 2.0)
    assert all(isinstance(w, Word) for w in t.words)
    if t.words:  # the decoder's word list is the text, with times inside the audio
        assert " ".join(w.word for w in t.words) == t.text
        assert all(0.0 <= w.start_s <= w.end_s <= 2.0 for w in t.words)
    # deterministic: dropout is off
    assert parakeet_engine.transcribe(noise(2.0)).text == t.text


def test_short_clip_is_padded_and_times_stay_inside(parakeet_engine):
    t = parakeet_engine.transcribe(noise(0.3, seed=3))
    assert t.audio_seconds == pytest.approx(0.3)
    assert all(w.end_s <= 0.3 for w in t.words)
    assert not parakeet_engine.model.training


def test_empty_audio_gives_empty_transcript(parakeet_engine):
    t = parakeet_engine.transcribe(np.zeros(0, dtype=np.float32))
    assert t.text == "" and t.words == () and t.audio_seconds == 0.0 and t.is_empty


@pytest.mark.parametrize(
    "audio, rate, message",
    [
        (np.zeros(16000, dtype=np.int16), 16000, "float32"),
        (np.zeros(16000, dtype=np.float64), 16000, "float32"),
        (np.zeros((16000, 2), dtype=np.float32), 16000, "mono"),
        (np.zeros(8000, dtype=np.float32), 8000, "16000 Hz"),
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), 16000, "NaN"),
        (np.array([0.0, np.inf], dtype=np.float32), 16000, "NaN or infinite"),
        ([0.0] * 16000, 16000, "numpy array"),
        (np.zeros(61 * 16000, dtype=np.float32), 16000, "at most 60 s"),
    ],
)
def test_bad_input_is_rejected_clearly(parakeet_engine, audio, rate, message):
    with pytest.raises(STTInputError, match=message):
        parakeet_engine.transcribe(audio, rate)
    assert isinstance(STTInputError("x"), ValueError)


def test_concurrent_calls_are_serialised(parakeet_engine):
    clips = [noise(1.5, seed=s) for s in range(4)]
    expected = [parakeet_engine.transcribe(c).text for c in clips]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = parakeet_engine.transcribe(clips[i]).text
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert [results[i] for i in range(4)] == expected
    assert not parakeet_engine.model.training


def test_missing_and_corrupt_files_raise_stt_error(tmp_path):
    with pytest.raises(STTError, match="not found"):
        ParakeetEngine.from_pretrained(tmp_path / "nope.nemo", device="cpu")
    bad = tmp_path / "bad.nemo"
    bad.write_bytes(b"this is not a tar archive")
    with pytest.raises(STTError, match="could not"):
        ParakeetEngine.from_pretrained(bad, device="cpu")


def test_cuda_request_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(STTError, match="no CUDA GPU"):
        ParakeetEngine.from_pretrained("whatever.nemo", device="cuda")


def test_hub_id_loads_from_the_hugging_face_cache(tiny_nemo, tmp_path, monkeypatch):
    """A hub id resolves to its ``.nemo`` in a pre-filled Hugging Face cache and loads from there, offline; one that
    is not cached is a clear error at once."""
    import huggingface_hub.constants as hf_constants

    repo = tmp_path / "hub" / "models--duplex-test--tiny-parakeet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_nemo, snapshot / "tiny-parakeet.nemo")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    engine = ParakeetEngine.from_pretrained("duplex-test/tiny-parakeet", device="cpu")
    assert engine.model_name == "duplex-test/tiny-parakeet" and not engine.model.training
    assert isinstance(engine.transcribe(noise(1.0)), Transcript)

    with pytest.raises(STTError, match="Hugging Face cache"):
        ParakeetEngine.from_pretrained("duplex-test/not-cached", device="cpu")
