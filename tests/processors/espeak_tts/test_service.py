"""EspeakTTSService through pipecat 1.14's own test harness: frames, output rates, word timestamps, interruption,
runtime voice/language switching, errors. The engine is the real libespeak-ng."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.settings import TTSSettings
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language

from processors.audio import ESPEAK_SAMPLE_RATE, pcm16_to_float
from processors.espeak_tts import EspeakEngine, EspeakTTSService, InvalidOptionError
from processors.tts_engine import UnsupportedLanguageError, VoiceError

TEXT = "Hello world. This is the espeak fallback speaking."


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def _audio(frames):
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


def _pcm(frames) -> np.ndarray:
    return np.concatenate([pcm16_to_float(f.audio) for f in _audio(frames)])


def median_f0(a: np.ndarray, sr: int) -> float:
    f0s = []
    win = int(0.046 * sr)
    lo, hi = sr // 400, sr // 70
    for i in range(0, len(a) - win, win // 2):
        w = a[i : i + win].astype(np.float64)
        if np.sqrt(np.mean(w * w)) < 0.05:
            continue
        ac = np.correlate(w, w, "full")[win - 1 :]
        f0s.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_speak_frames_at_pipeline_rate(engine, rate):
    expected = len(engine.synthesize(TEXT)) * rate / ESPEAK_SAMPLE_RATE
    tts = EspeakTTSService(engine=engine)
    down, up = await run_test(
        tts, frames_to_send=[TTSSpeakFrame(TEXT)], pipeline_params=PipelineParams(audio_out_sample_rate=rate)
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    types = [type(f) for f in down]
    assert types.count(TTSStartedFrame) == 1 and types.count(TTSStoppedFrame) == 1
    assert types.index(TTSStartedFrame) < types.index(TTSAudioRawFrame)
    last_audio = max(i for i, t in enumerate(types) if t is TTSAudioRawFrame)
    assert last_audio < types.index(TTSStoppedFrame)
    audio = _audio(down)
    assert len(audio) >= 10 and all(f.sample_rate == rate and f.num_channels == 1 for f in audio)
    pcm = _pcm(down)
    assert np.all(np.isfinite(pcm)) and np.sqrt(np.mean(pcm**2)) > 0.02
    assert abs(len(pcm) - expected) <= 0.01 * expected  # espeak's length wobbles ~0.2 % between calls
    words = [f.text.strip() for f in down if isinstance(f, TTSTextFrame)]
    assert words == TEXT.split()


async def test_word_timestamps_follow_the_audio(engine):
    tts = EspeakTTSService(engine=engine)
    down, _ = await run_test(
        tts, frames_to_send=[TTSSpeakFrame(TEXT)], pipeline_params=PipelineParams(audio_out_sample_rate=16000)
    )
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    pts = [f.pts for f in words]
    assert all(p is not None for p in pts) and pts == sorted(pts)
    spread_s = (pts[-1] - pts[0]) / 1e9
    seconds = len(_pcm(down)) / 16000
    assert 0.4 * seconds < spread_s < seconds  # estimated starts spread over the utterance, all inside it


class PacedEspeakEngine(EspeakEngine):
    """The real engine consumed at ~real-time pace (as a slow sink would), so an interruption lands mid-stream.
    Records when ``cancel`` was set and when the stream ended."""

    def __init__(self, pace_s: float = 0.01):
        super().__init__()
        self.pace_s = pace_s
        self.cancel_set_at: float | None = None
        self.stream_ended_at: float | None = None

    def stream_timed(self, text, voice=None, language="English", cancel=None, **generation):
        inner = super().stream_timed(text, voice, language, cancel, **generation)  # stream() is built on it

        def watch():
            cancel.wait()
            self.cancel_set_at = time.perf_counter()

        if cancel is not None:
            threading.Thread(target=watch, daemon=True).start()

        def paced():
            try:
                for chunk in inner:
                    yield chunk
                    time.sleep(self.pace_s)
            finally:
                self.stream_ended_at = time.perf_counter()

        return paced()


async def test_interruption_stops_worker_and_audio():
    engine = PacedEspeakEngine()
    long_text = " ".join(["This reply is long and will be cut off by the user before it ends."] * 20)
    tts = EspeakTTSService(engine=engine)
    down, _ = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame(long_text), SleepFrame(0.4), InterruptionFrame(), SleepFrame(0.3)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    idx = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert _audio(down[:idx]), "some audio played before the interruption"
    assert not _audio(down[idx:]), "no audio may follow the interruption"
    worker = tts.last_stream.thread
    worker.join(timeout=0.5)
    assert not worker.is_alive()
    assert engine.last_stats.cancelled
    assert engine.last_stats.sentences < 20
    latency = engine.stream_ended_at - engine.cancel_set_at
    assert latency < 0.1, latency  # within one paced chunk plus scheduling slack
    played = len(_pcm(down[:idx])) / 24000
    assert played < len(long_text.split()) / 175 * 60 / 2  # far less than the whole reply


async def test_runtime_voice_switch_and_unknown_voice(engine):
    tts = EspeakTTSService(engine=engine)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSSpeakFrame("Hello, how are you today?"),
            SleepFrame(0.3),
            TTSUpdateSettingsFrame(delta=TTSSettings(voice="f3")),
            TTSSpeakFrame("Hello, how are you today?"),
            SleepFrame(0.3),
            TTSUpdateSettingsFrame(delta=TTSSettings(voice="nobody")),
            TTSSpeakFrame("Still the same voice."),
            SleepFrame(0.3),
        ],
        pipeline_params=PipelineParams(audio_out_sample_rate=16000),
    )
    assert tts._settings.voice == "f3"
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert any("nobody" in e for e in errors)
    starts = [i for i, f in enumerate(down) if isinstance(f, TTSStartedFrame)]
    assert len(starts) == 3
    first, second = _pcm(down[starts[0] : starts[1]]), _pcm(down[starts[1] : starts[2]])
    assert median_f0(second, 16000) > 1.5 * median_f0(first, 16000)  # the female variant


async def test_runtime_language_switch(engine):
    tts = EspeakTTSService(engine=engine)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSUpdateSettingsFrame(delta=TTSSettings(language=Language.NL)),
            TTSSpeakFrame("Goedemorgen."),
            SleepFrame(0.3),
            TTSUpdateSettingsFrame(delta=TTSSettings(language=Language.DE_DE)),
            TTSSpeakFrame("Guten Morgen."),
            SleepFrame(0.3),
        ],
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert tts._settings.language == "German"
    assert tts.language_to_service_language(Language.NL) == "Dutch"
    assert len([f for f in down if isinstance(f, TTSStartedFrame)]) == 2 and _audio(down)


async def test_unknown_language_at_runtime_becomes_error_frame(engine):
    tts = EspeakTTSService(engine=engine, stop_frame_timeout_s=0.3)  # no audio: the context closes on this timeout
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSUpdateSettingsFrame(delta=TTSSettings(language="Klingon")),
            TTSSpeakFrame("Hello."),
            SleepFrame(0.3),
        ],
    )
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert errors and "unsupported language" in errors[0] and "English" in errors[0]
    assert not _audio(down)


def test_bad_construction_fails_early(engine):
    with pytest.raises(UnsupportedLanguageError):
        EspeakTTSService(engine=engine, language="Klingon")
    with pytest.raises(InvalidOptionError):
        EspeakTTSService(engine=engine, rate=5)
    with pytest.raises(VoiceError):
        EspeakTTSService(engine=engine, voice_id="nobody")


async def test_rate_and_voice_id_options(engine):
    async def seconds(**kwargs) -> float:
        down, _ = await run_test(
            EspeakTTSService(engine=engine, **kwargs),
            frames_to_send=[TTSSpeakFrame(TEXT)],
            pipeline_params=PipelineParams(audio_out_sample_rate=16000),
        )
        return len(_pcm(down)) / 16000

    assert await seconds(rate=320) < 0.7 * await seconds(rate=150)
    assert await seconds(voice_id="en-gb+m3") > 1.0


def test_engine_package_does_not_import_pipecat():
    code = (
        "import sys; from processors.espeak_tts import EspeakEngine; "
        "assert len(EspeakEngine().synthesize('Hi there.')) > 0; "
        "assert not any(m.startswith('pipecat') for m in sys.modules), 'pipecat imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
