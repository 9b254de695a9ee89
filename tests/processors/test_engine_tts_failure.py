"""``EngineTTSService`` when its engine cannot finish (``EngineUnavailableError``, what a remote engine raises when the
replica serving an utterance dies): the audio already made is kept, the bot says the failure notice through the
engine, the notice's text follows its audio for the context, an ``ErrorFrame`` (not fatal) reports it, and the next
utterance is spoken. The engine is the real libespeak-ng that loses its "replica" once, after a few chunks (the Ray
tests kill a real replica: ``tests/processors/ray_serve``, ``tests/agent/server/test_ray_serve.py``)."""

from __future__ import annotations

from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame, TTSSpeakFrame, TTSTextFrame
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from processors.engine_tts_service import FAILURE_NOTICE, EngineTTSService
from processors.espeak_tts import EspeakEngine
from processors.tts_engine import EngineUnavailableError, TTSError

LONG = "This is the first sentence of a long reply. " * 6


class LosesItsReplicaOnce(EspeakEngine):
    """Real espeak audio; the first stream fails after ``after`` chunks, the way a remote engine's stream does."""

    def __init__(self, after: int = 5, error: type[Exception] = EngineUnavailableError):
        super().__init__()
        self.after, self.error, self.streams = after, error, []

    def stream(self, text, voice=None, language="English", cancel=None, **generation):
        return self._fail_once(text, super().stream(text, voice, language, cancel, **generation))

    def stream_timed(self, text, voice=None, language="English", cancel=None, **generation):
        return self._fail_once(text, super().stream_timed(text, voice, language, cancel, **generation))

    def _fail_once(self, text, inner):
        self.streams.append(text)
        if len(self.streams) > 1:
            return inner

        def failing():
            for i, chunk in enumerate(inner):
                if i == self.after:
                    raise self.error("the espeak TTS replica serving this utterance stopped (ActorDiedError)")
                yield chunk

        return failing()


async def speak(engine, *texts):
    tts = EngineTTSService(engine, voice=engine.create_voice("English"))
    frames = []
    for text in texts:
        frames += [TTSSpeakFrame(text), SleepFrame(0.5)]
    down, up = await run_test(tts, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=24000))
    return down, up


async def test_the_bot_says_it_could_not_finish_and_goes_on():
    engine = LosesItsReplicaOnce()
    down, up = await speak(engine, LONG, "And the next reply is spoken.")
    assert engine.streams == [LONG, FAILURE_NOTICE, "And the next reply is spoken."]
    texts = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert FAILURE_NOTICE in texts, texts
    notice_at = next(i for i, f in enumerate(down) if isinstance(f, TTSTextFrame) and f.text == FAILURE_NOTICE)
    assert any(isinstance(f, TTSAudioRawFrame) for f in down[:notice_at])  # the notice's audio came first
    assert any(isinstance(f, TTSAudioRawFrame) for f in down[notice_at:])  # the next reply's audio
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "stopped" in errors[0].error and not errors[0].fatal


async def test_other_engine_errors_say_nothing():
    engine = LosesItsReplicaOnce(error=TTSError)
    down, up = await speak(engine, LONG)
    assert engine.streams == [LONG]  # no notice for an error of the request or the model itself
    assert [f for f in up if isinstance(f, ErrorFrame)]
    assert FAILURE_NOTICE not in [f.text for f in down if isinstance(f, TTSTextFrame)]
