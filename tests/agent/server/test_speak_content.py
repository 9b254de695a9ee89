"""What ``/api/v1/speak`` sends is the engine's own audio for that text and voice, resampled to the client's rate:
compared sample by sample, not only by length and loudness, so an inverted signal, reordered chunks or a wrong rate
fail.

* Qwen3-TTS: the tiny random model with a greedy generation config is deterministic, so the server's audio equals
  ``engine.stream`` for the same text and voice through one ``StreamResampler`` to within PCM16 rounding.
* espeak: libespeak-ng's output varies a little from call to call (see ``testkit.audio_compare``), so the server's
  audio is compared window by window with a fresh rendering (``assert_same_waveform``).
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from processors.audio import StreamResampler
from testkit.audio_compare import assert_same_waveform

from .conftest import collect_speak, decode, make_engine, open_session, wait_until

ESPEAK_TEXT = "Hello there. This is a streaming speech test, with a second clause."
QWEN_TEXT = "Hello there, this is a streaming test."


def engine_audio(engine, live, text: str, rate: int) -> np.ndarray:
    """The engine's own stream for the server's default voice, through one StreamResampler to ``rate``."""
    voice = engine.load_voice(live.ctx.registry.default().spec())
    resampler = StreamResampler(engine.sample_rate, rate)
    parts = [resampler.process(c) for c in engine.stream(text, voice, "English")]
    parts.append(resampler.flush())
    return np.concatenate(parts)


async def server_audio(live, text: str, rate: int, encoding: str = "pcm16", audio_format: str = "binary") -> np.ndarray:
    ws, _, _ = await open_session(
        live.speak_url, {"sampleRate": rate, "encoding": encoding, "audioFormat": audio_format}
    )
    try:
        await ws.send(json.dumps({"type": "speak", "text": text}))
        frames, messages, end = await collect_speak(ws, timeout=120)
    finally:
        await ws.close()
    assert end["type"] == "complete", end
    if audio_format == "json":
        frames = [base64.b64decode(m["data"]) for m in messages if m["type"] == "audioChunk"]
    return decode(b"".join(frames), encoding)


# --- Qwen3-TTS, greedy: exact ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_greedy(tmp_path_factory):
    import torch

    from processors.qwen3_tts import Qwen3TTSEngine
    from testkit.qwen3_tts_model import build_random_model_dir

    torch.set_num_threads(1)
    model = build_random_model_dir(tmp_path_factory.mktemp("qwen3") / "tiny-greedy", "tiny", seed=0, greedy=True)
    return Qwen3TTSEngine.from_pretrained(model, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def qwen_live(qwen_greedy, server_factory):
    live = server_factory(qwen_greedy)
    assert wait_until(live.ctx.default_voice_loaded, 300.0)
    return live


@pytest.mark.parametrize("rate, encoding", [(24_000, "pcm16"), (16_000, "pcm16"), (48_000, "pcm32f")])
async def test_qwen3_greedy_audio_is_the_engines_own(qwen_live, qwen_greedy, rate, encoding):
    got = await server_audio(qwen_live, QWEN_TEXT, rate, encoding)
    want = engine_audio(qwen_greedy, qwen_live, QWEN_TEXT, rate)
    assert np.abs(want).max() > 0.01, "the tiny model must make audible output for this to mean anything"
    assert len(got) == len(want), (len(got), len(want))
    step = 1 / 32768 if encoding == "pcm16" else 1e-6  # PCM16 rounding (the server rounds, the reference does not)
    error = float(np.max(np.abs(got - np.clip(want, -1, 1))))
    assert error <= step, f"max difference {error:.2e}: not the engine's audio"


async def test_qwen3_greedy_json_audio_is_the_engines_own(qwen_live, qwen_greedy):
    got = await server_audio(qwen_live, QWEN_TEXT, 24_000, audio_format="json")
    want = engine_audio(qwen_greedy, qwen_live, QWEN_TEXT, 24_000)
    assert len(got) == len(want) and float(np.max(np.abs(got - want))) <= 1 / 32768


# --- espeak: the same waveform, allowing its call-to-call jitter ---------------------------------------------------
@pytest.fixture(scope="module")
def espeak_live(engine_root, server_factory):
    live = server_factory(make_engine("espeak", engine_root))
    assert wait_until(live.ctx.default_voice_loaded, 60.0)
    return live


@pytest.mark.parametrize(
    "rate, encoding, audio_format",
    [(8_000, "pcm16", "binary"), (22_050, "pcm16", "binary"), (48_000, "pcm32f", "binary"), (16_000, "pcm16", "json")],
)
async def test_espeak_audio_is_the_engines_own(espeak_live, rate, encoding, audio_format):
    engine = espeak_live.ctx.engines.tts
    got = await server_audio(espeak_live, ESPEAK_TEXT, rate, encoding, audio_format)
    want = engine_audio(engine, espeak_live, ESPEAK_TEXT, rate)
    match = assert_same_waveform(got, want, rate)
    print(f"\n{rate} Hz {encoding} {audio_format}: {match}")
