"""Guards on the voice-chat entry points (no pipeline needed): the token, MODEL_LOADING while the engines load, the
session cap, bad requests; and the page and its static files are served."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from agent.serve import build_app
from agent.server import Engines
from agent.settings import ServerSettings, Settings

from .conftest import LiveServer


def live(tmp_path, engines: Engines | None = None, **server) -> LiveServer:
    settings = Settings(voices_dir=tmp_path / "voices", server=ServerSettings(**server))
    return LiveServer(build_app(settings, engines if engines is not None else Engines())).start()


async def ws_refusal(url: str) -> tuple[dict, int]:
    async with websockets.connect(url) as ws:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as e:
            return msg, e.rcvd.code
    raise AssertionError("the server did not close")


async def test_loading_and_failed_models_refuse_sessions(tmp_path):
    engines = Engines()
    server = live(tmp_path, engines)
    try:
        base = f"127.0.0.1:{server.port}"
        msg, code = await ws_refusal(f"ws://{base}/ws")
        assert (msg["type"], msg["code"], code) == ("error", "MODEL_LOADING", 1013), msg
        r = httpx.post(f"http://{base}/api/offer", json={"sdp": "v=0", "type": "offer"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "MODEL_LOADING", r.text
        async with websockets.connect(f"ws://{base}/telephony/twilio") as ws:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                assert e.rcvd.code == 1013
        health = httpx.get(f"http://{base}/healthz", timeout=10).json()
        assert health["models"]["pipeline"]["state"] == "loading"
        engines.fail("STT parakeet: not cached")
        msg, code = await ws_refusal(f"ws://{base}/ws")
        assert msg["code"] == "MODEL_LOADING" and "not cached" in msg["message"] and code == 1013, msg
        health = httpx.get(f"http://{base}/healthz", timeout=10).json()
        assert health["models"]["pipeline"] == {"state": "failed", "error": "STT parakeet: not cached"}, health
        assert server.ctx.sessions.active == 0
    finally:
        server.stop()


async def test_token_required(tmp_path):
    server = live(tmp_path, auth_token="s3cret")
    try:
        base = f"127.0.0.1:{server.port}"
        msg, code = await ws_refusal(f"ws://{base}/ws")
        assert (msg["code"], code) == ("UNAUTHORIZED", 1008), msg
        msg, code = await ws_refusal(f"ws://{base}/ws?token=wrong")
        assert (msg["code"], code) == ("UNAUTHORIZED", 1008), msg
        msg, code = await ws_refusal(f"ws://{base}/ws?token=s3cret")  # past auth: the models are still loading
        assert msg["code"] == "MODEL_LOADING", msg
        r = httpx.post(f"http://{base}/api/offer", json={"sdp": "v=0", "type": "offer"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        async with websockets.connect(f"ws://{base}/telephony/twilio") as ws:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                assert e.rcvd.code == 1008
        page = httpx.get(f"http://{base}/", timeout=10)  # the page itself is open; it passes ?token= on
        assert page.status_code == 200 and "/static/app.js" in page.text
    finally:
        server.stop()


async def test_session_cap_and_bad_requests(tmp_path):
    engines = Engines()
    server = live(tmp_path, engines, max_sessions=1)
    try:
        base = f"127.0.0.1:{server.port}"
        from processors.pocketsphinx_stt import PocketsphinxEngine

        engines.set_pipeline_ready(stt=PocketsphinxEngine())  # no TTS yet: still loading
        assert engines.pipeline_state == "loading"
        slot = server.ctx.sessions.try_acquire("other")
        from processors.espeak_tts import EspeakEngine

        engines.set_tts(EspeakEngine())
        assert engines.pipeline_state == "ready"
        msg, code = await ws_refusal(f"ws://{base}/ws")
        assert (msg["code"], code) == ("RATE_LIMITED", 1013), msg
        from .test_webrtc_offers import real_offer

        pc, sdp = await real_offer()
        await pc.close()
        r = httpx.post(f"http://{base}/api/offer", json={"sdp": sdp, "type": "offer"}, timeout=10)
        assert r.status_code == 429 and r.json()["error"]["code"] == "RATE_LIMITED"
        slot.release()
        r = httpx.post(f"http://{base}/api/offer", content=b"not json", timeout=10)
        assert r.status_code == 415 and r.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
        r = httpx.post(f"http://{base}/api/offer", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"
        r = httpx.patch(f"http://{base}/api/offer", json={"pc_id": "nope", "candidates": []}, timeout=10)
        assert r.status_code == 404
        assert httpx.get(f"http://{base}/static/style.css", timeout=10).status_code == 200
        assert httpx.get(f"http://{base}/static/..%2Fchat.py", timeout=10).status_code == 404
        assert server.ctx.sessions.active == 0
        assert (
            'duplex_sessions_rejected_total{kind="browser_ws",reason="RATE_LIMITED"} 1'
            in httpx.get(f"http://{base}/metrics", timeout=10).text
        )
    finally:
        server.stop()


async def test_ws_session_on_qwen3_tts(tmp_path, engine_root):
    """The Qwen3-TTS path of a voice session (tiny random Qwen3-TTS, the real upstream code): the session builds its
    ``Qwen3TTSService`` from the shared engine and the registry voice, answers ``ready``, and frees its slot."""
    from processors.llm.local_engine import get_shared_engine

    from .conftest import make_engine

    engines = Engines(make_engine("qwen3", engine_root))
    from processors.pocketsphinx_stt import PocketsphinxEngine

    engines.set_pipeline_ready(stt=PocketsphinxEngine(), llm=get_shared_engine(None))
    server = live(tmp_path, engines)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws?voice=default") as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert ready["type"] == "ready" and ready["voice"] == "default", ready
            await ws.send(b"\0\0" * 320)
            assert server.ctx.sessions.active_by_kind() == {"browser_ws": 1}
            (agent,) = server.ctx.voice_sessions.values()
            assert type(agent.tts).__name__ == "Qwen3TTSService", agent.tts
        for _ in range(100):
            if not server.ctx.sessions.active:
                break
            await asyncio.sleep(0.05)
        assert server.ctx.sessions.active == 0
    finally:
        server.stop()
