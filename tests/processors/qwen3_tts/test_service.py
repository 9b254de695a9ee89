"""Qwen3TTSService through pipecat 1.14's own test harness: frames, rates, word timestamps, interruption, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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

from processors.audio import CODEC_FRAME_MS, pcm16_to_float
from processors.qwen3_tts import Qwen3TTSEngine, Qwen3TTSService
from testkit.frame_probe import FrameProbe
from testkit.qwen3_tts_model import make_reference_audio

GREEDY = dict(do_sample=False, subtalker_dosample=False)


@pytest.fixture(scope="module")
def engine(tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, first_chunk_frames=1, chunk_frames=2)


@pytest.fixture(scope="module")
def voices(engine):
    ref = (make_reference_audio(4.0, 24000, seed=2), 24000)
    return {"alice": engine.create_voice(ref, "Alice reads a short reference."), "bob": engine.create_voice(ref)}


def _audio(frames):
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_speak_frames_at_pipeline_rate(engine, voices, rate):
    tts = Qwen3TTSService(engine=engine, voice=voices["alice"], generation={**GREEDY, "max_frames": 12})
    down, _ = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("Hello world, streaming now.")],
        pipeline_params=PipelineParams(audio_out_sample_rate=rate),
    )
    types = [type(f) for f in down]
    assert TTSStartedFrame in types and TTSStoppedFrame in types
    assert types.index(TTSStartedFrame) < types.index(TTSAudioRawFrame) < types.index(TTSStoppedFrame)
    audio = _audio(down)
    assert len(audio) >= 2 and all(f.sample_rate == rate and f.num_channels == 1 for f in audio)
    pcm = np.concatenate([pcm16_to_float(f.audio) for f in audio])
    # 12 frames of 80 ms at the output rate, within the resampler's rounding
    assert abs(len(pcm) - 12 * CODEC_FRAME_MS * rate // 1000) <= 2
    words = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert [w.strip() for w in words] == ["Hello", "world,", "streaming", "now."]


async def test_resampled_stream_has_no_seam_clicks(engine, voices):
    """Chunks resampled by one stream resampler equal the whole utterance resampled at once (no seam artefacts)."""
    from processors.audio import resample

    whole = engine.synthesize("Seamless resampling check.", voices["bob"], "English", max_frames=12, **GREEDY)
    tts = Qwen3TTSService(engine=engine, voice=voices["bob"], generation={**GREEDY, "max_frames": 12})
    down, _ = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("Seamless resampling check.")],
        pipeline_params=PipelineParams(audio_out_sample_rate=16000),
    )
    ours = np.concatenate([pcm16_to_float(f.audio) for f in _audio(down)])
    ref = resample(whole, 24000, 16000)
    n = min(len(ours), len(ref))
    # interior samples (the filters' edges differ slightly); pcm16 quantisation is 3e-5
    err = np.abs(ours[200 : n - 200] - ref[200 : n - 200])
    assert err.max() < 0.02 * max(np.abs(ref).max(), 1e-3)


async def test_interruption_stops_worker_and_audio(engine, voices):
    tts = Qwen3TTSService(engine=engine, voice=voices["alice"], generation={**GREEDY, "max_frames": 2000})
    down, _ = await run_test(
        tts,
        frames_to_send=[
            TTSSpeakFrame("This reply is long and will be cut off by the user."),
            SleepFrame(1.0),
            InterruptionFrame(),
            SleepFrame(0.3),
        ],
    )
    idx = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert _audio(down[:idx]), "some audio played before the interruption"
    assert not _audio(down[idx:]), "no audio may follow the interruption"
    worker = tts.last_stream.thread
    worker.join(timeout=0.5)  # one frame of the tiny model is a few ms; allow scheduling slack
    assert not worker.is_alive()
    assert engine.last_stats.cancelled


async def test_interruption_mid_chunk_at_default_chunking(tiny_qwen_never_eos_dir):
    """At the default chunking (1 frame, then 4) the interruption lands while the worker is in the middle of the
    second chunk (held after frame 3 until the service sets its cancel event): at most one more codec frame is
    generated (counted on the frame loop), and no audio follows the interruption."""
    engine = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)
    assert (engine.first_chunk_frames, engine.chunk_frames) == (1, 4)
    voice = engine.create_voice((make_reference_audio(4.0, 24000, seed=2), 24000))
    tts = Qwen3TTSService(engine=engine, voice=voice, generation={**GREEDY, "max_frames": 2000})
    with FrameProbe(engine, hold_at=3) as probe:
        down, _ = await run_test(
            tts,
            frames_to_send=[
                TTSSpeakFrame("This reply is long and will be cut off by the user."),
                SleepFrame(2.0),  # the worker reaches frame 3 in well under a second and waits there
                InterruptionFrame(),
                SleepFrame(0.3),
            ],
        )
        held_before_cancel = probe.held.is_set() and not probe.hold_expired
    assert held_before_cancel, "the worker never reached frame 3 before the interruption: the test proves nothing"
    assert probe.cancel is tts.last_stream.cancel_event and probe.cancel.is_set()
    assert probe.after_cancel <= 1, f"{probe.after_cancel} codec frames generated after the cancel event"
    idx = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert len(np.concatenate([pcm16_to_float(f.audio) for f in _audio(down[:idx])])) == 1920  # the first chunk
    assert not _audio(down[idx:]), "no audio may follow the interruption"
    tts.last_stream.thread.join(timeout=0.5)
    assert not tts.last_stream.thread.is_alive() and engine.last_stats.cancelled


async def test_voice_switch_and_unknown_voice(engine, voices):
    tts = Qwen3TTSService(engine=engine, voice=voices["alice"], voices=voices, generation={**GREEDY, "max_frames": 4})
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSUpdateSettingsFrame(delta=TTSSettings(voice="bob")),
            TTSSpeakFrame("Now Bob speaks."),
            SleepFrame(0.5),
            TTSUpdateSettingsFrame(delta=TTSSettings(voice="nobody")),
            TTSSpeakFrame("Still Bob."),
            SleepFrame(0.5),
        ],
    )
    assert tts._settings.voice == "bob"
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert any("nobody" in e.error for e in errors)
    assert len([f for f in down if isinstance(f, TTSStartedFrame)]) == 2


async def test_engine_error_becomes_error_frame(engine, voices):
    tts = Qwen3TTSService(
        engine=engine, voice=voices["alice"], language="Klingon", generation={**GREEDY, "max_frames": 4}
    )
    down, up = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hello."), SleepFrame(0.3)])
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert errors and "unsupported language" in errors[0] and "English" in errors[0]
    assert not _audio(down)
