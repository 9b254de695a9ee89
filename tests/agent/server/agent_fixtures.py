"""A live agent server (real uvicorn on loopback) with the fallback engines, loaded by ``load_engines`` exactly as
``duplex serve`` loads them: espeak TTS, pocketsphinx STT, the bundled SmolLM2 (replies capped for speed)."""

from __future__ import annotations

import pytest

from agent.settings import LLMSettings, ServerSettings, Settings, STTSettings, TTSSettings

from .conftest import LiveServer


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from agent.engines import load_engines
    from agent.serve import build_app

    settings = Settings(
        voices_dir=tmp_path_factory.mktemp("voices"),
        tts=TTSSettings(engine="espeak"), stt=STTSettings(engine="pocketsphinx"),
        llm=LLMSettings(backend="local", max_tokens=24, temperature=0.0),
        server=ServerSettings(idle_timeout_s=60),
    )
    engines = load_engines(settings)
    live = LiveServer(build_app(settings, engines)).start()
    yield live
    live.stop()
