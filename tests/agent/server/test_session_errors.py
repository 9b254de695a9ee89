"""A step of the pipeline failing mid-session reaches the person, and the session goes on. The LLM is a real
OpenAI-compatible endpoint on loopback (``testkit.local_servers.ChatEndpoint``) that passes the check at start and
then answers HTTP 500:

* ``/ws``: an ``error`` event (``LLM_ERROR``, what failed) and the state back to ``listening``; a bad client
  message is an ``INVALID_MESSAGE`` error event, typed turns sent faster than they can be taken are refused
  (``RATE_LIMITED``); once the endpoint works again, the next turn is answered.
* Twilio: the caller hears a short spoken apology instead of silence, the call stays up, and the failure is
  counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import websockets

from agent.serve import build_app
from agent.settings import LLMSettings, ServerSettings, Settings, STTSettings, TTSSettings
from pipelines.engines import load_engines
from testkit.clips import speech
from testkit.local_servers import ChatEndpoint

from .conftest import LiveServer
from .test_agent_entrypoints import FRAME_S, Pacer, mulaw_frames


@pytest.fixture(scope="module")
def failing_llm_server(tmp_path_factory):
    with ChatEndpoint(models=["scripted"]) as llm:
        settings = Settings(
            voices_dir=tmp_path_factory.mktemp("voices"),
            tts=TTSSettings(engine="espeak"),
            stt=STTSettings(engine="pocketsphinx"),
            llm=LLMSettings(backend=llm.url, model="scripted"),
            server=ServerSettings(idle_timeout_s=60),
        )
        server = LiveServer(build_app(settings, load_engines(settings))).start()
        yield server, llm
        server.stop()


async def test_ws_error_event_then_the_session_goes_on(failing_llm_server):
    server, llm = failing_llm_server
    events: list[dict] = []
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "ready"

        async def until(predicate, timeout: float = 30.0) -> dict:
            deadline = time.monotonic() + timeout
            while True:
                msg = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
                if isinstance(msg, str):
                    events.append(json.loads(msg))
                    if predicate(events[-1]):
                        return events[-1]

        await ws.send("not json")
        bad = await until(lambda e: e["type"] == "error")
        flooded_from = len(events)
        for i in range(12):  # a client typing faster than turns can be taken: refused, not queued without end
            await ws.send(json.dumps({"type": "text", "text": f"Count to {i}."}))

        def flood_answered(_event: dict) -> bool:
            """Every typed turn refused or taken, and the bot back to listening after the last one taken.

            How many are taken depends on how far the session got with the first ones while the rest arrived
            (``MAX_PENDING_TEXT`` wait behind the one being taken), and each waits for the reply before it to be
            played, so one reply's ``listening`` is not the end of the flood."""
            flood = events[flooded_from:]
            refused = sum(1 for e in flood if e["type"] == "error")
            taken = [i for i, e in enumerate(flood) if e["type"] == "transcript" and e.get("typed")]
            if not taken or refused + len(taken) < 12:
                return False
            after = [e["state"] for e in flood[taken[-1] :] if e["type"] == "state"]
            return "speaking" in after and after[-1] == "listening"

        await until(flood_answered, timeout=60)
        flood = events[flooded_from:]
        limited = next(e for e in flood if e["type"] == "error")
        taken = sum(1 for e in flood if e["type"] == "transcript" and e.get("typed"))
        assert 1 <= taken <= 12 - 1, flood
        llm.fail = True
        await ws.send(json.dumps({"type": "text", "text": "What is the weather like?"}))
        failed = await until(lambda e: e["type"] == "error")
        after_error = await until(lambda e: e["type"] == "state")
        llm.fail = False
        recovered_from = len(events)
        await ws.send(json.dumps({"type": "text", "text": "And tomorrow?"}))
        await until(lambda e: e["type"] == "state" and e["state"] == "speaking")
        await until(lambda e: e["type"] == "state" and e["state"] == "listening")
    assert bad == {"type": "error", "code": "INVALID_MESSAGE", "message": "a message must be JSON", "recoverable": True}
    assert limited["code"] == "RATE_LIMITED" and "faster than the bot" in limited["message"], limited
    assert failed["code"] == "LLM_ERROR" and "500" in failed["message"] and failed["recoverable"], failed
    assert after_error == {"type": "state", "state": "listening"}, events
    bot = " ".join(e["text"] for e in events[recovered_from:] if e["type"] == "transcript" and e["role"] == "bot")
    assert bot == "Paris is sunny today.", events[recovered_from:]
    states = [e["state"] for e in events if e["type"] == "state"]
    assert all(a != b for a, b in zip(states, states[1:])), states  # each state once


async def test_twilio_caller_hears_an_apology(failing_llm_server):
    server, llm = failing_llm_server
    llm.fail = True
    stream_sid = "MZ00000000000000000000000000000002"
    question = mulaw_frames(speech("flite_weather_kal16.wav", 8000))
    silence = mulaw_frames(np.zeros(int(8000 * FRAME_S), np.float32))[0]
    media_after: list[float] = []
    try:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/telephony/twilio", max_size=None) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            start = {"streamSid": stream_sid, "callSid": "CA1", "customParameters": {}, "tracks": ["inbound"]}
            await ws.send(json.dumps({"event": "start", "streamSid": stream_sid, "start": start}))
            seq = 0

            async def send(payload: str) -> None:
                nonlocal seq
                seq += 1
                media = {"track": "inbound", "chunk": str(seq), "timestamp": str(seq * 20), "payload": payload}
                await ws.send(json.dumps({"event": "media", "streamSid": stream_sid, "media": media}))

            async def reader() -> None:
                async for msg in ws:
                    if json.loads(msg).get("event") == "media":
                        media_after.append(time.monotonic())

            read_task = asyncio.create_task(reader())
            pacer = Pacer()
            for payload in question:
                await send(payload)
                await pacer.tick()
            speech_end = time.monotonic()
            while time.monotonic() < speech_end + 30 and len([t for t in media_after if t > speech_end]) < 50:
                await send(silence)
                await pacer.tick()
            still_up = server.ctx.sessions.active_by_kind().get("twilio") == 1
            await ws.send(json.dumps({"event": "stop", "streamSid": stream_sid}))
            read_task.cancel()
            await asyncio.gather(read_task, return_exceptions=True)
    finally:
        llm.fail = False
    apology_s = len([t for t in media_after if t > speech_end]) * 0.02
    assert apology_s >= 1.0, apology_s  # 50 frames of 20 ms: the spoken apology, not silence
    assert still_up
    assert server.ctx.metrics.errors.value(kind="twilio", code="LLM_ERROR") >= 1
    assert llm.requests, "the LLM was asked"
    print(f"\ntwilio: {apology_s:.1f} s of apology audio after the LLM failed")
