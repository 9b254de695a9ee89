"""The virtual transport on its own: 20 ms input frames on schedule, anchors on bot events, paced recorded output."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.frames.frames import Frame, InputAudioRawFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipelines.metrics import TurnMetrics, apply_ground_truth
from pipelines.virtual_transport import BackgroundTrack, UserUtterance, VirtualTransport, voiced_segments, voiced_span
from testkit.clips import speech


class InputTap(FrameProcessor):
    def __init__(self):
        super().__init__()
        self.frames: list[InputAudioRawFrame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.frames.append(frame)
        await self.push_frame(frame, direction)


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def run(transport: VirtualTransport, tap: InputTap, until, timeout: float, feed_bot=None):
    worker = PipelineWorker(
        Pipeline([transport.input(), tap, transport.output()]),
        enable_rtvi=False,
        params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=24000),
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    try:
        if feed_bot is not None:
            await feed_bot(worker)
        await transport.wait_for(until, timeout)
    finally:
        await worker.cancel()
        await asyncio.wait_for(task, 5)


def test_voiced_span():
    audio = np.concatenate([np.zeros(1600, np.float32), tone(0.5), np.zeros(3200, np.float32)])
    start, end = voiced_span(audio, 16000)
    assert abs(start - 0.1) <= 0.01 and abs(end - 0.6) <= 0.01


def pink(seconds: float, dbfs: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    n = int(seconds * rate)
    rng = np.random.default_rng(seed)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.sqrt(np.mean(noise**2)) * 10 ** (dbfs / 20)).astype(np.float32)


def test_voiced_segments_find_pauses_and_ignore_a_noise_floor():
    """Two questions 1 s apart, clean and under steady noise 20 dB below their peak level: the same two stretches
    (within 60 ms), the pause and the padding not counted as speech. (Everything within 30 dB of the peak, the rule
    before, makes the noisy file one stretch from its first sample to its last.)"""
    weather, table = speech("flite_weather_kal16.wav"), speech("flite_table_rms.wav")
    clean = np.concatenate([weather, np.zeros(16000, np.float32), table])
    expected = [(0.23, 2.11), (2.24 + 1.0 + 0.17, 2.24 + 1.0 + 2.65)]
    for audio in (clean, clean + pink(len(clean) / 16000, -40.0)):
        segments = voiced_segments(audio, 16000)
        assert len(segments) == 2, segments
        for (a, b), (x, y) in zip(segments, expected):
            assert abs(a - x) <= 0.06 and abs(b - y) <= 0.06, segments
    assert voiced_segments(np.zeros(16000, np.float32), 16000) == [] and voiced_span(np.zeros(10), 16000) == (0, 0)


def test_ground_truth_per_pipeline_turn():
    """An utterance with a pause that ended a turn: each turn gets the speech before its own VAD stop, never the end
    of the whole utterance (which made the first turn's waits negative)."""
    segments = [(1.0, 3.0, "u"), (4.5, 6.0, "u")]
    first = TurnMetrics(index=0, user_turn_start=1.3, vad_start=1.3, vad_stop=3.3, vad_stop_secs=0.2, speech_end=3.1)
    second = TurnMetrics(index=1, user_turn_start=4.8, vad_start=4.8, vad_stop=6.3, vad_stop_secs=0.2, speech_end=6.1)
    apply_ground_truth([first, second], segments)
    assert (first.speech_start, first.speech_end) == (1.0, 3.0) and first.vad_stop_wait == pytest.approx(0.3)
    assert (second.speech_start, second.speech_end) == (4.5, 6.0)
    # whole-utterance spans (the old input) give the same for a turn that covers the utterance
    whole = TurnMetrics(index=0, user_turn_start=1.3, vad_start=1.3, vad_stop=6.3, vad_stop_secs=0.2, speech_end=6.1)
    apply_ground_truth([whole], [(1.0, 6.0, "u")])
    assert (whole.speech_start, whole.speech_end) == (1.0, 6.0)


async def test_background_is_mixed_under_everything_and_is_not_speech():
    """A bed under the whole input: in the silence before, between and after utterances, and under them; the
    utterance's recorded speech span is its own."""
    bed = BackgroundTrack(0.05 * np.ones(1600, np.float32), 16000, start_s=0.0, loop=True)  # a looped DC offset
    transport = VirtualTransport([UserUtterance(tone(0.3), at_s=0.2, label="a")], background=[bed])
    tap = InputTap()
    await run(transport, tap, lambda: transport.schedule_done.is_set() and len(tap.frames) >= 40, timeout=5)
    samples = np.concatenate([np.frombuffer(f.audio, "<i2") for f in tap.frames]).astype(np.float32) / 32768
    assert np.allclose(samples[:3000], 0.05, atol=1e-3)  # before the utterance: the bed alone
    assert np.allclose(samples[-3000:], 0.05, atol=1e-3)  # after it
    during = samples[int(0.25 * 16000) : int(0.45 * 16000)]
    assert abs(during.mean() - 0.05) < 2e-3 and during.max() > 0.3  # under it: tone + bed
    (a0, a1, _), t0 = transport.user_speech[0], transport.feed_started_at
    assert abs(a0 - t0 - 0.2) < 0.03 and abs(a1 - a0 - 0.3) < 0.02
    assert transport.user_segments == [(a0, a1, "a")]


def test_background_track_window_and_loop():
    track = BackgroundTrack(np.arange(4, dtype=np.float32), 4, start_s=1.0, end_s=3.0, loop=True)
    assert track.samples(0, 16).tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 0, 0]
    once = BackgroundTrack(np.arange(4, dtype=np.float32), 4, start_s=0.5, loop=False)
    assert once.samples(0, 8).tolist() == [0, 0, 0, 1, 2, 3, 0, 0]


async def test_feeds_the_schedule_in_20ms_frames():
    transport = VirtualTransport(
        [
            UserUtterance(tone(0.3), at_s=0.1, label="a"),
            UserUtterance(tone(0.2), after="previous_end", offset_s=0.2, label="b"),
        ]
    )
    tap = InputTap()
    await run(transport, tap, lambda: transport.schedule_done.is_set() and len(tap.frames) >= 50, timeout=5)
    assert all(len(f.audio) == 640 and f.sample_rate == 16000 for f in tap.frames)
    t0 = transport.feed_started_at
    (a0, a1, _), (b0, b1, _) = transport.user_speech
    assert abs(a0 - t0 - 0.1) < 0.03 and abs(a1 - a0 - 0.3) < 0.02
    assert abs(b0 - a1 - 0.2) < 0.03 and abs(b1 - b0 - 0.2) < 0.02
    samples = np.concatenate([np.frombuffer(f.audio, "<i2") for f in tap.frames]).astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(samples) > 0.1)
    assert abs(loud[0] / 16000 - 0.1) < 0.03  # the first utterance sits where it was scheduled in the stream


async def test_output_is_paced_recorded_and_anchors_follow_the_bot():
    transport = VirtualTransport([UserUtterance(tone(0.2), after="bot_started_speaking", offset_s=0.3, label="x")])
    tap = InputTap()

    async def bot_says(worker):
        await transport.wait_for(lambda: transport.feed_started_at is not None, 5)
        await asyncio.sleep(0.2)
        await worker.queue_frame(TTSAudioRawFrame(audio=bytes(2 * 24000), sample_rate=24000, num_channels=1))
        await worker.queue_frame(TTSStoppedFrame())

    await run(
        transport,
        tap,
        lambda: transport.schedule_done.is_set() and "bot_stopped_speaking" in [e.kind for e in transport.events],
        timeout=5,
        feed_bot=bot_says,
    )
    chunks = transport.audio
    assert len(chunks) == 25 and all(abs(c.end - c.start - 0.04) < 1e-6 for c in chunks)  # 1 s in 40 ms chunks
    assert chunks[-1].end - chunks[0].start >= 0.999  # played at clock speed, back to back
    assert all(b.start >= a.end - 1e-9 for a, b in zip(chunks, chunks[1:]))
    bot_started = transport.event_times("bot_started_speaking")[0]
    assert abs(bot_started - chunks[0].start) < 0.02
    start, _, _ = transport.user_speech[0]
    assert 0.3 - 0.01 <= start - bot_started < 0.3 + 0.05  # "0.3 s into the bot's speech"
