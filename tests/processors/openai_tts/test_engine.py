"""``OpenAISpeechEngine`` against our own ``duplex serve`` (``/v1/audio/speech`` on a real uvicorn, espeak behind it):
the audio it streams is the server engine's audio, voices by id, language, cancel stops the server's engine within
a step (its slot and worker come back), errors map to the engine errors, an endpoint that is down or dies
mid-stream gives ``EngineUnavailableError``, and the catalogue row builds it from settings."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from processors.audio import resample
from processors.catalogue import TTSOptions, entry
from processors.openai_tts import OpenAISpeechEngine
from processors.tts_engine import EngineUnavailableError, InvalidTextError, TTSError, VoiceError, collect
from tests.agent.server.conftest import LONG_TEXT, speak_threads, wait_until

TOKEN = "endpoint-token"


@pytest.fixture(scope="module")
def live(espeak, server_factory):
    return server_factory(espeak, auth_token=TOKEN)


def engine_for(live, **kw) -> OpenAISpeechEngine:
    kw.setdefault("api_key", TOKEN)
    return OpenAISpeechEngine(f"{live.http}/v1", model="duplex", **kw)


def test_streams_the_server_engines_audio(live, espeak):
    engine = engine_for(live)
    text = "The quick brown fox jumps over the lazy dog."
    chunks = list(engine.stream(text, "default", "English"))
    got = np.concatenate(chunks)
    voice = espeak.load_voice(live.ctx.registry.default().spec())
    want = resample(espeak.synthesize(text, voice, "English"), espeak.sample_rate, 24000)
    # espeak's timing varies slightly from run to run, so compare lengths and loudness envelopes (20 ms windows)
    assert abs(len(got) - len(want)) <= 480, (len(got), len(want))
    n = min(len(got), len(want)) // 480 * 480
    envelope = lambda x: np.sqrt((x[:n].reshape(-1, 480) ** 2).mean(axis=1))
    corr = np.corrcoef(envelope(got), envelope(want))[0, 1]
    assert corr > 0.9, corr


def test_voice_ids_and_languages(live):
    engine = engine_for(live, languages=("English", "German"))
    german = collect(engine.stream("Guten Morgen.", "German+f3", "German"))
    assert len(german) > 12000
    with pytest.raises(VoiceError, match="alloy"):
        list(engine.stream("Hello.", "alloy"))
    with pytest.raises(Exception, match="unsupported language"):
        engine.stream("Hello.", "default", "French")  # checked here, before the request


def test_request_errors(live):
    engine = engine_for(live, max_text_chars=10_000)
    with pytest.raises(InvalidTextError, match="input"):
        list(engine.stream("x" * 3000, "default"))  # the server's limit (2000), reported as the server says it
    with pytest.raises(TTSError, match="401"):
        list(engine_for(live, api_key="wrong").stream("Hello.", "default"))
    with pytest.raises(TTSError, match="no option"):
        engine.stream("Hello.", "default", temperature=0.5)
    speed = collect(engine.stream("Hello there, how are you?", "default", speed=2.0))
    normal = collect(engine.stream("Hello there, how are you?", "default"))
    assert 0.4 < len(speed) / len(normal) < 0.6


def test_cancel_stops_the_server_within_a_step(live):
    engine = engine_for(live)
    base = len(speak_threads())
    cancel = threading.Event()
    stream = engine.stream(LONG_TEXT, "default", "English", cancel, speed=0.25)
    next(stream)
    assert live.ctx.sessions.active_by_kind().get("openai_speech") == 1
    t0 = time.perf_counter()
    cancel.set()
    rest = list(stream)
    stopped = time.perf_counter() - t0
    assert stopped < 0.5, stopped
    assert len(rest) <= 1
    assert wait_until(lambda: not live.ctx.sessions.active_by_kind().get("openai_speech"), 5)
    assert wait_until(lambda: len(speak_threads()) <= base, 5), speak_threads()
    print(f"\ncancel -> client stream ended in {stopped * 1000:.1f} ms")


def test_endpoint_down_or_dying_is_unavailable(espeak, server_factory):
    with pytest.raises(EngineUnavailableError, match="cannot reach"):
        list(OpenAISpeechEngine("http://127.0.0.1:9/v1", model="x", timeout_s=2).stream("Hello.", "default"))
    dying = server_factory(espeak, max_speak_audio_s=3600)  # the response must outlive the graceful shutdown
    engine = OpenAISpeechEngine(f"{dying.http}/v1", model="x")
    stream = engine.stream(LONG_TEXT, "default", "English", speed=0.25)
    next(stream)
    stopper = threading.Thread(target=dying.stop)  # graceful shutdown, then open responses are cut
    stopper.start()
    with pytest.raises(EngineUnavailableError, match="ended the stream early"):
        for _ in stream:
            time.sleep(0.01)  # a slow reader keeps the response open past the graceful period
    stopper.join()


def test_catalogue_row_builds_it_from_settings(live):
    options = TTSOptions(engine="openai", endpoint=f"{live.http}/v1", endpoint_api_key=TOKEN, model="m")
    row = entry("tts", "openai")
    ok, why = row.auto(options, None)
    assert ok and live.http in why
    engine = row.load(options, None)
    assert isinstance(engine, OpenAISpeechEngine) and engine.url == f"{live.http}/v1/audio/speech"
    assert len(collect(engine.stream("One.", "default"))) > 2400
    assert not row.auto(TTSOptions(), None)[0]
