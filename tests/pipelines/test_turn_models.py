"""The turn policy's shared models: every session's VAD and Smart Turn analyzer runs on one ONNX session per process,
with its own state, and hears exactly what pipecat's own analyzers hear."""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams

from pipelines.policy import TurnOptions, VADOptions, build_user_turn_strategies, build_vad_analyzer
from pipelines.turn_models import SharedSileroVADAnalyzer, SharedSmartTurnAnalyzer, silero_session
from processors.audio import STT_SAMPLE_RATE, TELEPHONY_SAMPLE_RATE, float_to_pcm16
from testkit.clips import speech


def _confidences(analyzer, audio: np.ndarray, rate: int) -> list[float]:
    analyzer.set_sample_rate(rate)
    n = analyzer.num_frames_required()
    pcm = float_to_pcm16(audio[: len(audio) // n * n])
    return [float(np.ravel(analyzer.voice_confidence(pcm[i : i + 2 * n]))[0]) for i in range(0, len(pcm), 2 * n)]


def test_shared_vad_hears_what_pipecats_vad_hears():
    for rate in (STT_SAMPLE_RATE, TELEPHONY_SAMPLE_RATE):
        audio = np.concatenate([np.zeros(rate, np.float32), speech("flite_weather_kal16.wav", rate)])
        stock = _confidences(SileroVADAnalyzer(), audio, rate)
        a, b = SharedSileroVADAnalyzer(), SharedSileroVADAnalyzer()
        # two sessions interleaved on the one model: each keeps its own recurrent state
        got_a = _confidences(a, audio, rate)
        noise = np.random.default_rng(0).normal(0, 0.3, len(audio)).astype(np.float32)
        _confidences(b, noise, rate)
        got_again = _confidences(a, audio, rate)  # a continues from its own state, not b's
        assert np.allclose(got_a, stock, atol=1e-6), rate
        assert max(stock) > 0.9 and min(stock) < 0.1
        assert a._model.session is b._model.session is silero_session()
        fresh = SileroVADAnalyzer()
        _confidences(fresh, audio, rate)
        assert np.allclose(got_again, _confidences(fresh, audio, rate), atol=1e-6)


def test_shared_analyzers_set_what_pipecats_set():
    """The shared analyzers skip pipecat's ``__init__`` (it loads a model): they must set every attribute it sets, so
    a pipecat upgrade that adds one fails here rather than in a call."""
    params = VADParams(confidence=0.6)
    assert set(vars(SharedSileroVADAnalyzer(params=params))) == set(vars(SileroVADAnalyzer(params=params)))
    assert set(vars(SharedSmartTurnAnalyzer())) == set(vars(LocalSmartTurnAnalyzerV3()))


def test_policy_builds_analyzers_on_the_shared_models():
    vad = build_vad_analyzer(VADOptions(confidence=0.5, start_secs=0.1))
    assert isinstance(vad, SharedSileroVADAnalyzer) and vad.params.confidence == 0.5
    strategies = build_user_turn_strategies(TurnOptions(stop_strategy="smart_turn"), echo_guard=False)
    analyzer = strategies.stop[0]._turn_analyzer
    assert isinstance(analyzer, SharedSmartTurnAnalyzer)
    other = build_user_turn_strategies(TurnOptions(stop_strategy="smart_turn"), echo_guard=False).stop[0]
    assert other._turn_analyzer is not analyzer and other._turn_analyzer._session is analyzer._session


def test_shared_smart_turn_gives_pipecats_verdict():
    audio = speech("flite_weather_kal16.wav", STT_SAMPLE_RATE)

    def verdict(analyzer):
        analyzer.set_sample_rate(STT_SAMPLE_RATE)
        pcm = float_to_pcm16(audio)
        step = 2 * STT_SAMPLE_RATE // 50
        for i in range(0, len(pcm), step):
            analyzer.append_audio(pcm[i : i + step], is_speech=True)
        state, result = asyncio.run(analyzer.analyze_end_of_turn())
        asyncio.run(analyzer.cleanup())
        return state, round(float(result.probability), 5) if result is not None else None

    assert verdict(SharedSmartTurnAnalyzer()) == verdict(LocalSmartTurnAnalyzerV3())
