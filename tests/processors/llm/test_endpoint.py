"""``check_endpoint`` against real local servers: an OpenAI-compatible endpoint that serves the model passes (with
its latency); one that is down, refuses the key or does not serve the model is a message that names the flag to fix;
the catalogue's endpoint row runs the check when the engines load, before any local model."""

from __future__ import annotations

import socket
import time

import pytest

from processors.llm import LLMOptions, LLMUnavailableError, check_endpoint
from testkit.local_servers import ChatEndpoint


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_a_serving_endpoint_passes():
    with ChatEndpoint(models=["llama3.2:latest", "qwen2.5"]) as llm:
        found = check_endpoint(LLMOptions(backend=llm.url, model="llama3.2"))  # Ollama's alias for ":latest"
        assert found.listed == ("llama3.2:latest", "qwen2.5") and found.latency_ms > 0
        assert found.describe()["endpoint"]["reachable"] is True


def test_a_stopped_endpoint_is_a_clear_error_at_once():
    url = closed_url()
    t0 = time.perf_counter()
    with pytest.raises(LLMUnavailableError, match=f"cannot reach the LLM endpoint {url}.*--llm"):
        check_endpoint(LLMOptions(backend=url, model="m"))
    assert time.perf_counter() - t0 < 3


def test_wrong_key_and_wrong_model_name_their_flags():
    with ChatEndpoint(models=["a", "b"], api_key="sk-right") as llm:
        with pytest.raises(LLMUnavailableError, match="refused the API key .*--llm-api-key"):
            check_endpoint(LLMOptions(backend=llm.url, model="a", api_key="sk-wrong"))
        wrong_model = "does not serve the model 'c' \\(--llm-model\\); it serves: a, b"
        with pytest.raises(LLMUnavailableError, match=wrong_model):
            check_endpoint(LLMOptions(backend=llm.url, model="c", api_key="sk-right"))
        assert check_endpoint(LLMOptions(backend=llm.url, model="b", api_key="sk-right")).model == "b"


def test_loading_checks_the_endpoint_first(tmp_path):
    """``load_engines`` checks a remote LLM before it loads anything local: a stopped endpoint fails in about a
    second, and the failure is on the engines' status (``/healthz``)."""
    from pipelines.engines import Engines, ModelUnavailable, load_engines
    from pipelines.options import AgentOptions
    from processors.catalogue import STTOptions, TTSOptions

    options = AgentOptions(
        tts=TTSOptions(engine="espeak"), stt=STTOptions(engine="pocketsphinx"), llm=LLMOptions(backend=closed_url())
    )
    engines = Engines()
    with pytest.raises(ModelUnavailable, match="needs a model name \\(--llm-model, or DUPLEX_LLM__MODEL\\)"):
        load_engines(options, engines=engines)
    options = options.model_copy(update={"llm": LLMOptions(backend=options.llm.backend, model="m")})
    engines = Engines()
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="cannot reach the LLM endpoint"):
        load_engines(options, engines=engines)
    assert time.perf_counter() - t0 < 3
    described = engines.describe()
    assert described["llm"]["state"] == "failed" and "cannot reach" in described["llm"]["error"], described
    assert described["tts"]["state"] == "waiting" and engines.tts is None  # nothing local was loaded
    assert engines.state == "failed"
