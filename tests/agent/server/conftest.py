"""A real uvicorn server on 127.0.0.1 (random free port, background thread) around ``create_app``, real engines, and
small WebSocket helpers.

Engines: ``DUPLEX_SERVER_TEST_ENGINES`` (comma-separated, default ``espeak,qwen3``) picks the engines the
engine-parametrised tests run on: ``espeak`` = ``EspeakEngine``; ``qwen3`` = ``Qwen3TTSEngine`` on the tiny random
Qwen3-TTS model built offline (the real upstream code path with random weights, ~35 ms per frame).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import websockets

from agent.server import Engines, create_app
from agent.settings import LLMSettings, ServerSettings, Settings, STTSettings, TTSSettings
from voices.registry import VoiceRegistry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ENGINE_NAMES = [n.strip() for n in os.environ.get("DUPLEX_SERVER_TEST_ENGINES", "espeak,qwen3").split(",") if n.strip()]
LONG_TEXT = " ".join(
    f"This is sentence number {i} of a long passage that keeps the engine busy for a while." for i in range(1, 16)
)


# --- engines ----------------------------------------------------------------------------------------
_ENGINES: dict[str, Any] = {}


def make_engine(name: str, tmp_root: Path) -> Any:
    """One engine per name per test session (models load once, like ``duplex serve``)."""
    if name in _ENGINES:
        return _ENGINES[name]
    import torch

    torch.set_num_threads(1)
    if name == "espeak":
        from processors.espeak_tts import EspeakEngine

        engine = EspeakEngine()
    elif name == "qwen3":
        from processors.qwen3_tts import Qwen3TTSEngine
        from testkit.qwen3_tts_model import build_random_model_dir

        model_dir = build_random_model_dir(tmp_root / "qwen3-tiny", "tiny", seed=0)
        engine = Qwen3TTSEngine.from_pretrained(model_dir, device="cpu", dtype="float32")
    else:
        raise ValueError(f"unknown test engine {name!r}")
    _ENGINES[name] = engine
    return engine


@pytest.fixture(scope="session")
def engine_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def espeak(engine_root):
    return make_engine("espeak", engine_root)


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def any_engine(request, engine_root):
    return make_engine(request.param, engine_root)


# --- server -----------------------------------------------------------------------------------------
def make_settings(voices_dir: Path, **server: Any) -> Settings:
    server.setdefault("idle_timeout_s", 30.0)
    return Settings(
        voices_dir=voices_dir, tts=TTSSettings(voice=None, language="English"), server=ServerSettings(**server)
    )


def fallback_voice_server(voices_dir: Path, *, llm_max_tokens: int = 8, **server: Any) -> LiveServer:
    """A started server with the fallback engines as ``duplex serve`` loads them (espeak, pocketsphinx, the local
    LLM, greedy), for voice-session tests; ``server``: ``ServerSettings`` fields."""
    from agent.serve import build_app
    from pipelines.engines import load_engines

    settings = Settings(
        voices_dir=voices_dir,
        tts=TTSSettings(engine="espeak"),
        stt=STTSettings(engine="pocketsphinx"),
        llm=LLMSettings(backend="local", max_tokens=llm_max_tokens, temperature=0.0),
        server=ServerSettings(**server),
    )
    return LiveServer(build_app(settings, load_engines(settings))).start()


class LiveServer:
    """uvicorn in a background thread on an already-bound loopback socket."""

    def __init__(self, app: Any, ws_max_size: int = 16 * 1024 * 1024):
        self.app = app
        self.ctx = app.state.duplex
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", ws_max_size=ws_max_size, timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name=f"uvicorn-{self.port}", daemon=True
        )

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def speak_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/speak"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory):
    """``factory(engine, registry=None, engines=None, **server_settings) -> LiveServer``; all stopped at module end."""
    servers: list[LiveServer] = []

    def factory(
        engine: Any = None,
        *,
        engines: Engines | None = None,
        voices_dir: Path | None = None,
        registry: VoiceRegistry | None = None,
        ws_max_size: int = 16 * 1024 * 1024,
        **server: Any,
    ) -> LiveServer:
        voices_dir = voices_dir or tmp_path_factory.mktemp("user-voices")
        settings = make_settings(voices_dir, **server)
        app = create_app(settings, engines if engines is not None else Engines(tts=engine), registry=registry)
        live = LiveServer(app, ws_max_size=ws_max_size).start()
        servers.append(live)
        return live

    yield factory
    for live in servers:
        live.stop()


# --- client helpers -----------------------------------------------------------------------------------
async def recv(ws: Any, timeout: float = 10.0) -> Any:
    """The next frame: a dict for JSON text, bytes for binary."""
    frame = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(frame) if isinstance(frame, str) else frame


async def recv_json(ws: Any, timeout: float = 10.0) -> dict:
    frame = await recv(ws, timeout)
    assert isinstance(frame, dict), f"expected a JSON message, got {len(frame)} bytes of audio"
    return frame


async def open_session(url: str, start: dict | None = None, headers: dict | None = None) -> tuple[Any, dict, dict]:
    """Connect, read ready, send start (if given; ``pacing`` defaults to "asap" here so tests run fast) and read
    started. Returns (ws, ready, started)."""
    ws = await websockets.connect(url, additional_headers=headers, max_size=None)
    ready = await recv_json(ws)
    assert ready["type"] == "ready", ready
    started: dict = {}
    if start is not None:
        await ws.send(json.dumps({"type": "start", "pacing": "asap", **start}))
        started = await recv_json(ws)
        assert started["type"] == "started", started
    return ws, ready, started


async def collect_speak(ws: Any, timeout: float = 60.0) -> tuple[list[bytes], list[dict], dict]:
    """Frames until a complete or error: (binary frames, JSON messages before the end, the final message)."""
    frames: list[bytes] = []
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if isinstance(frame, bytes):
            frames.append(frame)
            continue
        if frame["type"] in ("complete", "error"):
            return frames, messages, frame
        messages.append(frame)


def decode(data: bytes, encoding: str) -> np.ndarray:
    if encoding == "pcm16":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def get_json(live: LiveServer, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(live.http + path, timeout=10, **kw)


def speak_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("duplex-")]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


async def await_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """``wait_until`` for async tests: polls without a helper thread (which would count as a leaked thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


# --- a whole agent server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    """A live agent server (real uvicorn on loopback) with the fallback engines, loaded by ``load_engines`` exactly as
    ``duplex serve`` loads them: espeak TTS, pocketsphinx STT, the bundled SmolLM2 (replies capped for speed)."""
    from agent.serve import build_app
    from pipelines.engines import load_engines

    settings = Settings(
        voices_dir=tmp_path_factory.mktemp("voices"),
        tts=TTSSettings(engine="espeak"),
        stt=STTSettings(engine="pocketsphinx"),
        llm=LLMSettings(backend="local", max_tokens=24, temperature=0.0),
        server=ServerSettings(idle_timeout_s=60),
    )
    engines = load_engines(settings)
    live = LiveServer(build_app(settings, engines)).start()
    yield live
    live.stop()


def server_like(agent_server: LiveServer, voices_dir: Path, **server: Any) -> LiveServer:
    """Another live agent server on ``agent_server``'s loaded engines, with other server settings (a token, ICE
    servers...). Stop it yourself."""
    from agent.serve import build_app

    settings = agent_server.ctx.settings.model_copy(
        update={"server": ServerSettings(idle_timeout_s=60, **server), "voices_dir": voices_dir}
    )
    return LiveServer(build_app(settings, agent_server.ctx.engines)).start()
