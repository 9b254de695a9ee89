"""The token stays secret: ``duplex serve`` never writes a ``?token=`` value to its logs (uvicorn logged every request
line with it), and the API docs and schema need the token like every other API route."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import websockets

from agent.server.redaction import TokenRedactionFilter, redact
from testkit.local_servers import ChatEndpoint
from testkit.server_process import ServerProcess

TOKEN = "S3cret-Value-42"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``duplex serve`` with a token, logging at info (request lines and WebSocket accepts) into a file. The LLM is a
    scripted OpenAI-compatible endpoint on loopback: no model loads."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with ChatEndpoint(models=["scripted"]) as llm:
        engines = ("--tts", "espeak", "--stt", "pocketsphinx", "--llm", llm.url, "--llm-model", "scripted")
        server = ServerProcess(
            "--auth-token", TOKEN, "--log-level", "info", "--voices-dir", str(log.parent), engines=engines, log_path=log
        ).start()
        yield server, log
        server.stop()


async def test_token_never_reaches_the_log(served):
    server, log = served
    http = server.url("", "http")
    async with httpx.AsyncClient(base_url=http, timeout=10) as client:
        for path in ("/api/v1/voices", "/metrics", "/api/docs", "/api/openapi.json", "/api/v1/voices/nope"):
            await client.get(f"{path}?token={TOKEN}")
            await client.get(f"{path}?voice=x&token={TOKEN}&other=1")
        await client.get("/api/v1/voices?token=wrong-but-maybe-a-typo-of-it")
    for path in ("/ws", "/api/v1/speak", "/telephony/twilio"):
        async with websockets.connect(server.url(f"{path}?token={TOKEN}")) as ws:
            await asyncio.sleep(0.2)
            await ws.close()
    await asyncio.sleep(0.5)
    server.stop()  # flushes the log
    text = log.read_text()
    assert "token=***" in text and '"WebSocket /ws?token=***" [accepted]' in text, text[-2000:]
    assert TOKEN not in text and "wrong-but-maybe" not in text


def test_redaction_filter_on_a_record():
    args = ("1.2.3.4", "GET", "/a?token=x&b=1", "1.1", 200)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)
    assert TokenRedactionFilter().filter(record)
    assert record.getMessage() == '1.2.3.4 - "GET /a?token=***&b=1 HTTP/1.1" 200'
    assert redact("/x?notatoken=1") == "/x?notatoken=1"


def test_api_docs_need_the_token(espeak, server_factory):
    live = server_factory(espeak, auth_token=TOKEN)
    for path in ("/api/docs", "/api/openapi.json"):
        r = httpx.get(live.http + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED", (path, r.status_code)
    assert httpx.get(live.http + "/docs/oauth2-redirect").status_code == 404  # no OAuth2 flow, no page
    schema = httpx.get(live.http + "/api/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert schema.status_code == 200 and "/api/v1/voices" in schema.json()["paths"]
    page = httpx.get(live.http + f"/api/docs?token={TOKEN}")
    assert page.status_code == 200 and f"/api/openapi.json?token={TOKEN}" in page.text
    open_live = server_factory(espeak)  # without a token configured, the docs are open like everything else
    assert httpx.get(open_live.http + "/api/docs").status_code == 200
