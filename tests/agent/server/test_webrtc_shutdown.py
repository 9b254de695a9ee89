"""A WebRTC voice session (Python aiortc client: one audio track + the events data channel) gets its ``ready``
event, and stopping the server ends its pipeline worker and frees its slot: WebRTC sessions have no uvicorn
connection, so the app's shutdown cancels them itself."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from agent.serve import build_app
from agent.settings import LLMSettings, Settings, STTSettings, TTSSettings
from pipelines.engines import load_engines

from .conftest import LiveServer


async def test_webrtc_session_ends_with_the_server(tmp_path):
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack  # silence

    settings = Settings(
        voices_dir=tmp_path / "voices",
        tts=TTSSettings(engine="espeak"),
        stt=STTSettings(engine="pocketsphinx"),
        llm=LLMSettings(max_tokens=16),
    )
    server = LiveServer(build_app(settings, load_engines(settings))).start()
    pc = RTCPeerConnection()
    events: list[dict] = []
    try:
        channel = pc.createDataChannel("duplex")
        channel.on("message", lambda m: events.append(json.loads(m)))
        pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"http://127.0.0.1:{server.port}/api/offer?voice=nope",
                timeout=20,
                json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
            )
        assert r.status_code == 200, r.text
        await pc.setRemoteDescription(RTCSessionDescription(**{k: r.json()[k] for k in ("sdp", "type")}))
        deadline = time.monotonic() + 20
        while not any(e["type"] == "warning" for e in events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        ready = next(e for e in events if e["type"] == "ready")
        assert ready["voice"] == "default" and ready["engines"]["stt"]["engine"] == "pocketsphinx", ready
        assert "'nope' not found" in next(e for e in events if e["type"] == "warning")["message"]
        assert server.ctx.sessions.active_by_kind() == {"browser_webrtc": 1}
        assert len(server.ctx.voice_sessions) == 1
    finally:
        t0 = time.monotonic()
        await asyncio.to_thread(server.stop)  # asserts uvicorn stopped
        stopped_s = time.monotonic() - t0
        await pc.close()
    assert not server.ctx.voice_sessions and server.ctx.sessions.active == 0
    assert stopped_s < 10, stopped_s
