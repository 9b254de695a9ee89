"""create_llm_service with an OpenAI-compatible URL, against a real local HTTP server that streams SSE chunks."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pipecat.frames.frames import (
    ErrorFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import run_test

from processors.llm import DEFAULT_SYSTEM_PROMPT, LocalLLMService, create_llm_service
from processors.llm import LLMOptions as LLMSettings

CHUNKS = ["Hello", " there", "! How", " can I", " help", "?"]


def _chunk(model: str, delta: dict, finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


class ScriptedServer:
    """A real uvicorn server on 127.0.0.1:<random port> speaking the streaming chat completions protocol."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            body = await request.json()
            self.requests.append(body)
            self.auth.append(request.headers.get("authorization"))

            async def events():
                for i, text in enumerate(CHUNKS):
                    yield _chunk(body["model"], {"role": "assistant", "content": text} if i == 0 else {"content": text})
                    await asyncio.sleep(0.01)
                yield _chunk(body["model"], {}, finish="stop")
                usage = {"prompt_tokens": 12, "completion_tokens": len(CHUNKS), "total_tokens": 12 + len(CHUNKS)}
                last = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "test server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture(scope="module")
def server():
    with ScriptedServer() as s:
        yield s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_endpoint_tokens_stream_through_the_pipecat_service(server):
    settings = LLMSettings(backend=server.url, model="scripted-model", max_tokens=64, temperature=0.3)
    llm = create_llm_service(settings)
    context = LLMContext(messages=[{"role": "user", "content": "Hi!"}])
    down, up = await run_test(llm, frames_to_send=[LLMContextFrame(context)])
    flow = [f for f in down if isinstance(f, (LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame))]
    assert isinstance(flow[0], LLMFullResponseStartFrame) and isinstance(flow[-1], LLMFullResponseEndFrame)
    assert [f.text for f in flow[1:-1]] == CHUNKS
    assert [f for f in up if isinstance(f, ErrorFrame)] == []
    request = server.requests[-1]
    assert request["model"] == "scripted-model" and request["stream"] is True
    assert request["max_tokens"] == 64 and request["temperature"] == 0.3
    assert request["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Hi!"},
    ]
    assert server.auth[-1] == "Bearer not-needed"


async def test_api_key_is_sent_and_openai_key_does_not_leak_to_other_hosts(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    for key, expected in (("sk-given", "Bearer sk-given"), ("", "Bearer not-needed")):
        llm = create_llm_service(LLMSettings(backend=server.url, model="m", api_key=key))
        await run_test(llm, frames_to_send=[LLMContextFrame(LLMContext(messages=[{"role": "user", "content": "x"}]))])
        assert server.auth[-1] == expected


async def test_unreachable_endpoint_gives_a_clear_error_frame():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    llm = create_llm_service(LLMSettings(backend=url, model="m"))
    started = time.perf_counter()
    down, up = await run_test(
        llm, frames_to_send=[LLMContextFrame(LLMContext(messages=[{"role": "user", "content": "x"}]))]
    )
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    print(
        f"\nunreachable endpoint -> ErrorFrame in {time.perf_counter() - started:.1f} s: "
        f"{errors[0].error if errors else None}"
    )
    assert len(errors) == 1 and f"cannot reach the LLM endpoint {url}" in errors[0].error
    assert not [f for f in down if isinstance(f, LLMTextFrame)]
    assert any(isinstance(f, LLMFullResponseEndFrame) for f in down)  # the response is still closed


def test_openai_itself_gets_the_env_key_and_max_completion_tokens(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    llm = create_llm_service(LLMSettings(backend="https://api.openai.com/v1", model="gpt-4.1-mini", max_tokens=99))
    assert llm._client.api_key == "sk-env"
    assert llm._settings.max_completion_tokens == 99


def test_local_backend_builds_the_local_service():
    llm = create_llm_service(LLMSettings(backend="local", temperature=0.2, max_tokens=50))
    assert isinstance(llm, LocalLLMService)
    assert llm._settings.system_instruction == DEFAULT_SYSTEM_PROMPT
    assert llm._settings.temperature == 0.2 and llm._settings.max_tokens == 50


@pytest.mark.parametrize(
    "settings, match",
    [
        (LLMSettings(backend="ollama", model="m"), "'local' or an OpenAI-compatible base URL"),
        (LLMSettings(backend="ftp://host/v1", model="m"), "'local' or an OpenAI-compatible base URL"),
        (LLMSettings(backend="http://localhost:11434/v1"), "needs a model name"),
    ],
)
def test_bad_backend_settings_are_rejected_clearly(settings, match):
    with pytest.raises(ValueError, match=match):
        create_llm_service(settings)
