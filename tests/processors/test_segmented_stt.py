"""EngineSTTService through pipecat's run_test: VAD-bounded segments -> TranscriptionFrame, interim transcripts,
telephony and odd input rates, errors, metrics. Content is checked with pocketsphinx on real (flite) speech;
Parakeet runs on the tiny random model (plumbing only)."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    STTMuteFrame,
    TranscriptionFrame,
    UserAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language

from processors.audio import STT_SAMPLE_RATE, float_to_pcm16, resample
from processors.parakeet_stt import ParakeetSTTService
from processors.pocketsphinx_stt import PocketsphinxEngine, PocketsphinxSTTService
from processors.segmented_stt import EngineSTTService, SegmentTranscribedFrame
from processors.stt_engine import Transcript
from testkit.clips import speech
from testkit.transcripts import words_of

from .stt_words import TELEPHONE_KEY_WORDS, noise

FRAME_S = 0.02


def audio_frames(samples: np.ndarray, rate: int, *, user_id: str | None = None) -> list:
    step = int(rate * FRAME_S)
    out = []
    for i in range(0, len(samples), step):
        pcm = float_to_pcm16(samples[i : i + step])
        if user_id is None:
            out.append(InputAudioRawFrame(audio=pcm, sample_rate=rate, num_channels=1))
        else:
            out.append(UserAudioRawFrame(audio=pcm, sample_rate=rate, num_channels=1, user_id=user_id))
    return out


def utterance(
    samples_16k: np.ndarray,
    rate: int = STT_SAMPLE_RATE,
    *,
    pre_s: float = 0.6,
    post_s: float = 0.2,
    start_secs: float = 0.2,
    sleep_every_s: float | None = None,
    sleep_s: float = 0.0,
    user_id: str | None = None,
) -> list:
    """Frames as pipecat 1.14 delivers them: silence, speech, VADUserStartedSpeakingFrame once ``start_secs`` of
    speech has passed (the 1 s pre-roll buffer must catch the onset), trailing silence, then the VAD stop."""
    audio = resample(samples_16k, STT_SAMPLE_RATE, rate)
    pre = np.zeros(int(pre_s * rate), np.float32)
    post = np.zeros(int(post_s * rate), np.float32)
    head = audio_frames(np.concatenate([pre, audio[: int(start_secs * rate)]]), rate, user_id=user_id)
    body = audio_frames(audio[int(start_secs * rate) :], rate, user_id=user_id)
    if sleep_every_s:  # pace the replay so worker threads get time, as real-time audio would give them
        every = max(1, int(sleep_every_s / FRAME_S))
        paced = []
        for i, f in enumerate(body, 1):
            paced.append(f)
            if i % every == 0:
                paced.append(SleepFrame(sleep=sleep_s))
        body = paced
    tail = audio_frames(post, rate, user_id=user_id)
    return [
        *head,
        VADUserStartedSpeakingFrame(start_secs=start_secs),
        *body,
        *tail,
        VADUserStoppedSpeakingFrame(stop_secs=post_s),
    ]


class CountingPocketsphinx(PocketsphinxEngine):
    """The real engine, noting how much audio each stream feed gets (s) and how many one-pass decodes it runs."""

    def __init__(self):
        super().__init__()
        self.fed: list[float] = []
        self.whole = 0

    def transcribe(self, audio, sample_rate=STT_SAMPLE_RATE):
        self.whole += 1
        return super().transcribe(audio, sample_rate)

    def open_stream(self, source_rate=STT_SAMPLE_RATE):
        stream = super().open_stream(source_rate)
        feed = stream.feed

        def counted(audio):
            self.fed.append(len(audio) / STT_SAMPLE_RATE)
            return feed(audio)

        stream.feed = counted
        return stream


def of_type(frames, cls):
    return [f for f in frames if isinstance(f, cls)]


async def run(service, frames, *, rate: int = STT_SAMPLE_RATE, metrics: bool = False):
    params = PipelineParams(audio_in_sample_rate=rate, enable_metrics=metrics)
    down, up = await run_test(service, frames_to_send=frames, pipeline_params=params)
    return down, up


# --- Parakeet (tiny random model): the adapter's plumbing --------------------------------------------------
async def test_parakeet_segment_becomes_one_transcription_frame(parakeet_engine):
    stt = ParakeetSTTService(engine=parakeet_engine)
    down, up = await run(stt, utterance(noise(1.5), user_id="caller-7"), metrics=True)
    finals = of_type(down, TranscriptionFrame)
    assert len(finals) == 1
    frame = finals[0]
    assert isinstance(frame.result, Transcript) and frame.text == frame.result.text and frame.text
    assert frame.user_id == "caller-7" and frame.finalized and frame.language == Language.EN
    assert isinstance(frame.timestamp, str) and "T" in frame.timestamp
    # the segment is what VAD bounded plus pre-roll and pipecat's 0.5 s trailing silence
    assert 1.5 + 0.5 <= frame.result.audio_seconds <= 0.6 + 1.5 + 0.2 + 0.5 + 0.05
    # order: audio passes through, the final comes after the VAD stop
    stop_at = down.index(of_type(down, VADUserStoppedSpeakingFrame)[0])
    assert down.index(frame) > stop_at
    assert len(of_type(down, InputAudioRawFrame)) > 50
    assert not of_type(up, ErrorFrame)
    data = [d for m in of_type(down, MetricsFrame) for d in m.data]
    assert any(isinstance(d, ProcessingMetricsData) and d.value > 0 for d in data)
    assert any(isinstance(d, TTFBMetricsData) and d.value > 0 for d in data)


async def test_each_segment_ends_with_segment_transcribed():
    """After each segment's transcript (or its absence), in order: SegmentTranscribedFrame with the word count.
    (A scripted engine: words for the first segment, none for the second.)"""
    from agent.replay.scripted import ScriptedSTTEngine

    stt = EngineSTTService(ScriptedSTTEngine(["hello there", ""]))
    down, _ = await run(stt, utterance(noise(1.0)) + utterance(noise(1.0, seed=3)))
    done = of_type(down, SegmentTranscribedFrame)
    finals = of_type(down, TranscriptionFrame)
    assert len(done) == 2 and len(finals) == 1
    assert down.index(finals[0]) < down.index(done[0]) and done[0].words == len(finals[0].text.split()) > 0
    assert done[1].words == 0  # silence: no transcript, but the verdict still comes


async def test_parakeet_interim_transcripts_for_a_long_utterance(parakeet_engine):
    stt = ParakeetSTTService(engine=parakeet_engine, interim_interval_s=0.5)
    frames = utterance(noise(4.0, seed=5), sleep_every_s=0.5, sleep_s=0.15)
    down, up = await run(stt, frames)
    interims, finals = of_type(down, InterimTranscriptionFrame), of_type(down, TranscriptionFrame)
    assert len(finals) == 1 and not of_type(up, ErrorFrame)
    assert len(interims) >= 2, f"{stt.interim_passes} passes, {stt.interim_skipped} skipped"
    assert all(isinstance(f.result, Transcript) and f.text for f in interims)
    stop_at = down.index(of_type(down, VADUserStoppedSpeakingFrame)[0])
    assert all(down.index(f) < stop_at for f in interims)  # none after the VAD stop
    lengths = [f.result.audio_seconds for f in interims]
    assert lengths == sorted(lengths) and lengths[-1] < finals[0].result.audio_seconds


async def test_interim_finishing_after_the_vad_stop_is_dropped(parakeet_engine):
    # unpaced replay: the first pass is still running when the VAD stop arrives; give it time to finish
    stt = ParakeetSTTService(engine=parakeet_engine, interim_interval_s=0.2)
    down, up = await run(stt, [*utterance(noise(3.0, seed=9)), SleepFrame(sleep=1.0)])
    assert stt.interim_passes >= 1
    stop_at = down.index(of_type(down, VADUserStoppedSpeakingFrame)[0])
    assert not [f for f in of_type(down, InterimTranscriptionFrame) if down.index(f) > stop_at]
    assert len(of_type(down, TranscriptionFrame)) == 1


async def test_interims_are_off_by_default(parakeet_engine):
    stt = ParakeetSTTService(engine=parakeet_engine)
    down, _ = await run(stt, utterance(noise(3.0), sleep_every_s=0.5, sleep_s=0.1))
    assert not of_type(down, InterimTranscriptionFrame) and stt.interim_passes == 0


async def test_too_long_segment_is_an_error_frame_and_the_service_goes_on(parakeet_engine):
    # max_segment_s above the engine's own 60 s limit makes the engine itself reject the segment
    stt = ParakeetSTTService(engine=parakeet_engine, max_segment_s=120.0)
    long = np.full(int(61 * STT_SAMPLE_RATE), 0.01, np.float32)
    down, up = await run(stt, utterance(long, pre_s=0.0, post_s=0.0) + utterance(noise(1.0)))
    errors = of_type(up, ErrorFrame)
    assert len(errors) == 1
    assert "parakeet STT: unusable audio" in errors[0].error and "at most 60 s" in errors[0].error
    assert not errors[0].fatal and stt.is_usable
    assert len(of_type(down, TranscriptionFrame)) == 1  # the next utterance is transcribed


async def test_empty_segment_and_empty_frames_give_nothing(parakeet_engine):
    stt = PocketsphinxSTTService(engine=PocketsphinxEngine())
    frames = [
        InputAudioRawFrame(audio=b"", sample_rate=STT_SAMPLE_RATE, num_channels=1),
        InputAudioRawFrame(audio=b"\x01\x02\x03", sample_rate=STT_SAMPLE_RATE, num_channels=1),  # not whole samples
        VADUserStartedSpeakingFrame(),
        VADUserStoppedSpeakingFrame(),
    ]
    down, up = await run(stt, frames)
    assert not of_type(down, TranscriptionFrame) and not of_type(up, ErrorFrame)


# --- pocketsphinx on real speech: content through the adapter ------------------------------------------------
async def test_pocketsphinx_transcribes_speech_through_the_pipeline():
    stt = PocketsphinxSTTService()
    down, up = await run(stt, utterance(speech("flite_lights_slt.wav")))
    finals = of_type(down, TranscriptionFrame)
    assert len(finals) == 1 and not of_type(up, ErrorFrame)
    # "please" starts 0.2 s before the VAD start frame: only pipecat's pre-roll buffer keeps it
    assert {"please", "lights", "kitchen"} <= set(words_of(finals[0].text))
    assert finals[0].result.words and finals[0].language == Language.EN


async def test_telephony_8k_pipeline_is_resampled():
    stt = PocketsphinxSTTService()
    name = "flite_weather_kal16.wav"
    down, up = await run(stt, utterance(speech(name), rate=8000), rate=8000)
    assert stt.sample_rate == 8000 and not of_type(up, ErrorFrame)
    finals = of_type(down, TranscriptionFrame)
    assert len(finals) == 1
    assert set(TELEPHONE_KEY_WORDS[name]) <= set(words_of(finals[0].text)), finals[0].text
    # decoded as it came (pocketsphinx streams): the pre-roll, the speech and the silence up to the VAD stop, without
    # the padding a one-pass engine gets
    assert finals[0].result.audio_seconds == pytest.approx(0.6 + 2.24 + 0.2, abs=0.1)


async def test_frames_at_another_rate_than_the_pipeline_are_converted():
    stt = PocketsphinxSTTService()
    down, up = await run(stt, utterance(speech("flite_weather_kal16.wav"), rate=48000), rate=STT_SAMPLE_RATE)
    finals = of_type(down, TranscriptionFrame)
    assert stt.sample_rate == STT_SAMPLE_RATE and len(finals) == 1 and not of_type(up, ErrorFrame)
    assert {"weather", "paris"} <= set(words_of(finals[0].text))


async def test_interim_words_arrive_while_the_user_speaks():
    """Interims carry real words before the VAD stop, growing as the user speaks (pocketsphinx decodes each piece as
    it comes): what turn and interruption policy need. Paced like real audio, with time to decode."""
    stt = PocketsphinxSTTService(interim_interval_s=1.0)
    frames = utterance(speech("flite_meeting_rms.wav"), sleep_every_s=0.2, sleep_s=0.1)
    stop = frames.pop()  # VAD stop last
    down, up = await run(stt, [*frames, SleepFrame(sleep=1.0), stop])
    interims, finals = of_type(down, InterimTranscriptionFrame), of_type(down, TranscriptionFrame)
    assert len(interims) >= 3, f"{stt.interim_passes} hypotheses, {stt.interim_skipped} pieces held back"

    def heard_at(frame) -> float:  # seconds of input audio that had passed the service when it came
        i = down.index(frame)
        return sum(f.num_frames for f in down[:i] if isinstance(f, InputAudioRawFrame)) / STT_SAMPLE_RATE

    early = [f for f in interims if heard_at(f) < 0.6 + 3.0]  # "... moved to Thursday" is said by then
    assert any("meeting" in words_of(f.text) for f in early), [f.text for f in early]
    assert not any("lunch" in words_of(f.text) for f in early)  # not yet spoken
    assert len({f.text for f in interims}) == len(interims)  # only changed hypotheses are sent
    stop_at = down.index(of_type(down, VADUserStoppedSpeakingFrame)[0])
    assert all(down.index(f) < stop_at for f in interims)
    assert len(finals) == 1 and {"meeting", "lunch"} <= set(words_of(finals[0].text))


async def test_the_final_transcript_costs_only_the_last_piece():
    """With an incremental engine the utterance is decoded while it is spoken: at the VAD stop only the audio not
    yet fed is left, so the final transcript does not wait for a pass over the whole utterance."""

    engine = CountingPocketsphinx()
    stt = PocketsphinxSTTService(engine=engine)  # no interim frames: the stream serves the final alone
    frames = utterance(speech("flite_meeting_rms.wav"), sleep_every_s=0.2, sleep_s=0.1)
    stop = frames.pop()
    down, _ = await run(stt, [*frames, SleepFrame(sleep=1.0), stop])
    finals = of_type(down, TranscriptionFrame)
    assert len(finals) == 1 and {"meeting", "lunch"} <= set(words_of(finals[0].text))
    assert not of_type(down, InterimTranscriptionFrame)
    assert engine.whole == 0  # no one-pass decode of the segment
    assert sum(engine.fed) == pytest.approx(finals[0].result.audio_seconds, abs=0.25)
    assert engine.fed[-1] <= 0.25  # what was left for the VAD stop: the last piece, not the utterance


async def test_a_gil_holding_engine_is_fed_while_the_bot_speaks_only_when_its_audio_is_paused():
    """pocketsphinx holds the GIL while it decodes: while the bot speaks its stream waits (each piece would stall the
    event loop, and the bot's audio with it), so no interims and the utterance is decoded at the VAD stop. While the
    bot's audio is paused (a barge-in being decided) it is fed, so the words that decide come while the user speaks."""
    frames = utterance(speech("flite_meeting_rms.wav"), sleep_every_s=0.2, sleep_s=0.1)
    stop = frames.pop()
    for paused in (False, True):
        stt = PocketsphinxSTTService(interim_interval_s=1.0)
        stt.bot_audio_paused(paused)
        down, _ = await run(stt, [BotStartedSpeakingFrame(), *frames, SleepFrame(sleep=1.0), stop])
        interims, finals = of_type(down, InterimTranscriptionFrame), of_type(down, TranscriptionFrame)
        assert len(finals) == 1 and {"meeting", "lunch"} <= set(words_of(finals[0].text)), paused
        if paused:
            assert len(interims) >= 3 and stt.pieces_held_for_bot == 0
            assert "meeting" in words_of(interims[0].text + " " + interims[-1].text)
        else:
            assert not interims and stt.pieces_held_for_bot > 0


async def test_a_backlog_goes_to_a_gil_holding_engine_one_piece_per_call():
    """What gathered while the bot spoke (2 s of speech) is fed once it stops one piece per call, so the event loop
    waits for one piece's decode at a time (the worker lets go of the GIL between calls), not for the whole backlog
    (measured: the longest stall 42-66 ms instead of 300-330 ms for this clip)."""

    engine = CountingPocketsphinx()
    stt = PocketsphinxSTTService(engine=engine, interim_interval_s=1.0)
    frames = utterance(speech("flite_meeting_rms.wav"), sleep_every_s=0.2, sleep_s=0.1)
    start = next(i for i, f in enumerate(frames) if isinstance(f, VADUserStartedSpeakingFrame))
    over = start + 1 + int(2.0 / FRAME_S)  # the bot speaks over the first 2 s after the VAD start
    frames = [BotStartedSpeakingFrame(), *frames[:over], BotStoppedSpeakingFrame(), *frames[over:]]
    down, _ = await run(stt, frames)
    finals = of_type(down, TranscriptionFrame)
    assert len(finals) == 1 and {"meeting", "lunch"} <= set(words_of(finals[0].text))
    assert stt.pieces_held_for_bot > 0
    assert len(engine.fed) > 20 and max(engine.fed[:-1]) <= 0.1 + 1e-9, engine.fed  # the last: the VAD stop's rest


async def test_muted_service_transcribes_nothing():
    stt = PocketsphinxSTTService()
    down, _ = await run(stt, [STTMuteFrame(mute=True), *utterance(speech("flite_table_rms.wav"))])
    assert not of_type(down, TranscriptionFrame)


def test_turn_latency_hint_and_model_come_from_the_engine(parakeet_engine, tiny_nemo):
    stt = ParakeetSTTService(engine=parakeet_engine)
    meta = stt.service_metadata_frame()
    assert meta.ttfs_p99_latency == parakeet_engine.ttfs_p99_s == 1.5  # CPU
    assert stt._settings.model == str(tiny_nemo)
    assert PocketsphinxSTTService().service_metadata_frame().ttfs_p99_latency == 1.0
    custom = ParakeetSTTService(engine=parakeet_engine, ttfs_p99_latency=0.7)
    assert custom.service_metadata_frame().ttfs_p99_latency == 0.7


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_interim_interval_means_off(parakeet_engine, bad):
    assert ParakeetSTTService(engine=parakeet_engine, interim_interval_s=bad)._interim_interval_s is None
