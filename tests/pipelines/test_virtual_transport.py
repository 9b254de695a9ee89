"""The virtual transport on its own: 20 ms input frames on schedule, anchors on bot events, paced recorded output."""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.frames.frames import Frame, InputAudioRawFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipelines.virtual_transport import UserUtterance, VirtualTransport, voiced_span


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
