"""``/rtvi/ws`` at the wire (pipecat's protobuf frames) with a plain ``websockets`` client: garbage, text and odd audio
are dropped without ending the session, ``client-ready`` is answered with ``bot-ready``, ``send-text`` with a reply,
a vanished client frees its slot, and auth refuses with 1008. The full conversation through pipecat's own JS client
is in test_pipecat_client.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from pipecat.frames.protobufs import frames_pb2

from agent.server import Engines, create_app
from agent.server import rtvi as rtvi_router

from .conftest import LiveServer, await_until, make_settings


def message(payload: dict) -> bytes:
    frame = frames_pb2.Frame()
    frame.message.data = json.dumps(payload)
    return frame.SerializeToString()


def audio(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    frame = frames_pb2.Frame()
    frame.audio.audio = pcm
    frame.audio.sample_rate = rate
    frame.audio.num_channels = channels
    return frame.SerializeToString()


async def next_rtvi(ws, kind: str, timeout: float = 20.0) -> dict:
    async def read() -> dict:
        while True:
            data = await ws.recv()
            frame = frames_pb2.Frame.FromString(data)
            if frame.WhichOneof("frame") == "message":
                msg = json.loads(frame.message.data)
                if msg.get("label") == "rtvi-ai" and msg.get("type") == kind:
                    return msg

    return await asyncio.wait_for(read(), timeout)


@pytest.mark.slow
async def test_rtvi_ws_survives_junk_and_frees_its_slot(agent_server):
    url = f"ws://127.0.0.1:{agent_server.port}/rtvi/ws"
    ws = await websockets.connect(url, max_size=None)
    await ws.send(b"\xff\x00 not a protobuf frame")
    await ws.send("text is not the protocol")
    await ws.send(audio(b"\x00\x01\x02", 16000))  # odd byte count
    await ws.send(audio(bytes(1920), 48000, channels=2))  # stereo 48 kHz: converted, not refused
    await ws.send(message({"label": "rtvi-ai", "type": "client-ready", "id": "1", "data": {"version": "1.0.0"}}))
    ready = await next_rtvi(ws, "bot-ready")
    assert ready["id"] == "1" and ready["data"]["about"]["library"] == "pipecat-ai"
    await ws.send(message({"label": "rtvi-ai", "type": "no-such-message", "id": "2"}))
    error = await next_rtvi(ws, "error-response")
    assert error["id"] == "2"
    await ws.send(message({"label": "rtvi-ai", "type": "send-text", "id": "3", "data": {"content": "Hello there!"}}))
    typed = await next_rtvi(ws, "user-input")
    assert typed["data"]["text"] == "Hello there!"
    reply = await next_rtvi(ws, "bot-output", timeout=60)
    assert reply["data"]["text"].strip()
    assert agent_server.ctx.sessions.active_by_kind().get("rtvi_ws") == 1
    ws.transport.abort()
    assert await await_until(lambda: not agent_server.ctx.sessions.active, 15)


async def test_rtvi_ws_auth(tmp_path):
    live = LiveServer(
        create_app(make_settings(tmp_path, auth_token="t0k"), Engines(), routers=[rtvi_router.router])
    ).start()
    try:
        url = f"ws://127.0.0.1:{live.port}/rtvi/ws"
        for query, code in (("", 1008), ("?token=wrong", 1008), ("?token=t0k", 1013)):  # 1013: models not loaded
            async with websockets.connect(url + query) as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == code, (query, ws.close_code)
        assert not live.ctx.sessions.active
    finally:
        live.stop()
