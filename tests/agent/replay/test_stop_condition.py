"""When a replay stops: not while the pipeline still owes the last turn its answer. On the wall clock (``--realtime``)
the STT, LLM and TTS take real time; on a loaded machine pocketsphinx takes seconds for an utterance, longer than the
scenario's settle time, and the replay must wait for the answer rather than stop between the user's turn and the
bot's reply."""

from __future__ import annotations

import time
from pathlib import Path

from agent.replay import load_scenario, parse_scenario, replay
from agent.replay.scripted import ScriptedSTTEngine

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"
SLOW_STT_S = 2.5  # > the default settle time (1.5 s), as pocketsphinx takes on a small CPU under load


def test_realtime_replay_waits_for_a_slow_stt(monkeypatch):
    """A transcriber that takes 2.5 s (the scripted one, slowed down): the bot still answers within the replay."""
    transcribe = ScriptedSTTEngine.transcribe

    def slow(self, audio, sample_rate=16000):
        time.sleep(SLOW_STT_S)
        return transcribe(self, audio, sample_rate)

    monkeypatch.setattr(ScriptedSTTEngine, "transcribe", slow)
    scenario = load_scenario(EXAMPLES / "simple_qa.yaml")
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data["stt"] = {"scripted": ["what is the weather like in paris today"]}
    data["expect"] = [{"turn": "question", "answered": True, "reply_contains": "enjoy a walk by the river"}]
    result = replay(parse_scenario(data, base_dir=scenario.base_dir), realtime=True)
    turn = result.turns[0]
    print(f"\n{result.summary()}")
    # the transcript came later than the settle time after the VAD stop (the case this is about), and was answered
    assert turn.metrics.stt > scenario.settle_ms / 1000 and turn.answered


def test_replay_waits_for_a_slow_llm():
    """An LLM whose first word comes 2.5 s after the request (longer than the settle time): the turn has ended and
    the LLM was asked, nothing happens for a while, and the replay still waits for the answer it is owed."""
    scenario = load_scenario(EXAMPLES / "simple_qa.yaml")
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data["llm"] = {**data["llm"], "token_ms": 2500.0}  # 2.5 s before each word: the first sentence is enough here
    data["expect"] = [{"turn": "question", "answered": True, "reply_contains": "sunny in paris"}]
    result = replay(parse_scenario(data, base_dir=scenario.base_dir))
    assert result.turns[0].answered, result.summary()
