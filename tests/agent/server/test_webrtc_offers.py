"""``POST /api/offer`` refuses garbage before it takes a session slot (each used to get a 200 or a 500 and hold a
slot for minutes), and a real offer whose peer never connects gives its slot back after the connect timeout."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from .conftest import await_until, fallback_voice_server

CONNECT_S = 2.0
NO_MEDIA_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = fallback_voice_server(
        tmp_path_factory.mktemp("voices"),
        max_sessions=2,
        voice_connect_timeout_s=CONNECT_S,
    )
    yield live
    live.stop()


async def real_offer() -> tuple[object, str]:
    """(peer connection, its offer SDP): one audio transceiver and the events data channel, like the page."""
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    pc = RTCPeerConnection()
    pc.createDataChannel("duplex")
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def garbage(sdp: str) -> list[tuple[str, dict, int, str]]:
    """(what, httpx request kwargs, status, code)."""
    head, *media = sdp.split("m=")
    no_audio = head + "".join("m=" + m for m in media if not m.startswith("audio"))  # the data channel only
    as_json = {"content-type": "application/json"}
    as_text = {"content-type": "text/plain"}
    body = json.dumps({"sdp": sdp, "type": "offer"})
    return [
        ("40-byte SDP", {"json": {"sdp": "x", "type": "offer"}}, 400, "INVALID_SDP"),
        ("SDP without media", {"json": {"sdp": NO_MEDIA_SDP, "type": "offer"}}, 400, "INVALID_SDP"),
        ("SDP without audio", {"json": {"sdp": no_audio, "type": "offer"}}, 400, "INVALID_SDP"),
        ("sdp a number", {"json": {"sdp": 5, "type": "offer"}}, 400, "INVALID_REQUEST"),
        ("type answer", {"json": {"sdp": sdp, "type": "answer"}}, 400, "INVALID_REQUEST"),
        ("type bogus", {"json": {"sdp": sdp, "type": "bogus"}}, 400, "INVALID_REQUEST"),
        ("unknown pc_id, bad SDP", {"json": {"sdp": "x", "type": "offer", "pc_id": "nope"}}, 400, "INVALID_SDP"),
        ("no type", {"json": {"sdp": sdp}}, 400, "INVALID_REQUEST"),
        ("a list", {"json": [sdp, "offer"]}, 400, "INVALID_REQUEST"),
        ("text/plain", {"content": body, "headers": as_text}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("not JSON", {"content": b"{nope", "headers": as_json}, 400, "INVALID_REQUEST"),
        ("deep JSON", {"content": b"[" * 5000 + b"]" * 5000, "headers": as_json}, 400, "INVALID_REQUEST"),
        ("50 MB body", {"content": b"x" * (50 << 20), "headers": as_json}, 413, "PAYLOAD_TOO_LARGE"),
    ]


async def test_garbage_offers_take_no_slot(server):
    pc, sdp = await real_offer()
    try:
        async with httpx.AsyncClient(base_url=server.http, timeout=30) as client:
            for what, kwargs, status, code in garbage(sdp):
                r = await client.post("/api/offer", **kwargs)
                assert (r.status_code, r.json()["error"]["code"]) == (status, code), (what, r.text[:300])
                assert server.ctx.sessions.active == 0, what

            async def chunks():  # no Content-Length: refused while it streams in
                for _ in range(100):
                    yield b"x" * 65536

            r = await client.post("/api/offer", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413, r.text
            r = await client.patch("/api/offer", json={"pc_id": "nope", "candidates": [{"candidate": "garbage"}]})
            assert r.status_code == 400, r.text
            # after all that, a real offer is answered (the slots are all free)
            r = await client.post("/api/offer", json={"sdp": sdp, "type": "offer"})
            assert r.status_code == 200 and r.json()["type"] == "answer", r.text
            assert server.ctx.sessions.active == 1
    finally:
        await pc.close()


async def test_a_peer_that_never_connects_frees_its_slot(server):
    """The client posts its offer and vanishes before connecting: the session ends after the connect timeout."""
    assert await await_until(lambda: server.ctx.sessions.active == 0, timeout=CONNECT_S + 10)
    pc, sdp = await real_offer()
    await pc.close()  # gone before it ever reads the answer
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as client:
        r = await client.post("/api/offer", json={"sdp": sdp, "type": "offer"})
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    assert server.ctx.sessions.active == 1
    assert await await_until(lambda: server.ctx.sessions.active == 0, timeout=CONNECT_S + 10)
    assert time.monotonic() - t0 < CONNECT_S + 5
    await asyncio.sleep(0)
    assert not server.ctx.voice_sessions
