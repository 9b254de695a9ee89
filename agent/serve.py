"""``duplex serve``: one FastAPI/uvicorn app with every entry point (browser chat at ``/``, ``/api/offer``, ``/ws``,
``/telephony/twilio``, ``/api/v1/speak``, ``/v1/audio/speech``, ``/api/v1/voices``, ``/healthz``, ``/readyz``,
``/metrics``). With ``--ray`` the TTS and STT engines run as Ray Serve deployments and this process stays the agent:
transports, VAD, turn logic, the LLM client (docs/deploy.md).

Settings: flags over ``DUPLEX_*`` env vars over defaults (``agent.settings``). The server answers ``/healthz`` at once
and loads the models in a background thread (progress lines on stderr; ``MODEL_LOADING`` until ready). When a chosen
model cannot be had, it prints why and exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from agent.settings import Settings
    from pipelines.engines import Engines

EXIT_MODEL_UNAVAILABLE = 1


def configure(parser: argparse.ArgumentParser) -> None:
    from processors.catalogue import AUTO, names

    add = parser.add_argument
    add("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    add("--port", type=int, help="port (default 8000)")
    add("--tts", choices=[*names("tts"), AUTO], help="TTS engine (default auto)")
    add("--stt", choices=[*names("stt"), AUTO], help="STT engine (default auto)")
    add("--llm", metavar="local|URL", help="'local' (bundled SmolLM2) or an OpenAI-compatible base URL")
    add("--llm-model", help="model name at the LLM endpoint (or a local/hub model for --llm local)")
    add("--llm-api-key", help="API key for the LLM endpoint")
    add("--voice", help="default voice id (from /api/v1/voices)")
    add("--language", help="default language (e.g. English)")
    add("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    add("--auth-token", help="require this bearer token on every API and WebSocket")
    add("--max-sessions", type=int, help="concurrent sessions, all kinds together (default 10)")
    add(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="allow a web client app served from ORIGIN (e.g. http://localhost:5173) to call the API; repeatable",
    )
    add("--voices-dir", help="where user voices are stored (default ~/.local/share/duplex/voices)")
    add("--tts-model", help="Qwen3-TTS hub id or local directory")
    add("--stt-model", help="Parakeet hub id or local .nemo")
    add(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the TTS and STT engines as Ray Serve deployments: on the cluster at ADDRESS ('auto': the one "
        "'ray start' made here), or without ADDRESS on RAY_ADDRESS or a local Ray instance started here; "
        "replicas, GPUs and autoscaling from DUPLEX_RAY__* (docs/deploy.md)",
    )
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level (default info)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``Settings`` from env vars and defaults, with the flags given on top (nested groups merge)."""
    from agent.settings import Settings

    def given(name: str) -> Any:
        return getattr(args, name, None)

    overrides: dict[str, Any] = {}

    def put(group: str | None, field: str, value: Any) -> None:
        if value is None:
            return
        if group is None:
            overrides[field] = value
        else:
            overrides.setdefault(group, {})[field] = value

    put("server", "host", given("host"))
    put("server", "port", given("port"))
    put("server", "auth_token", given("auth_token"))
    put("server", "max_sessions", given("max_sessions"))
    put("server", "cors_origins", given("cors_origins"))
    put("tts", "engine", given("tts"))
    put("tts", "model", given("tts_model"))
    put("tts", "voice", given("voice"))
    put("tts", "language", given("language"))
    put("stt", "engine", given("stt"))
    put("stt", "model", given("stt_model"))
    put("llm", "backend", given("llm"))
    put("llm", "model", given("llm_model"))
    put("llm", "api_key", given("llm_api_key"))
    put(None, "device", given("device"))
    if given("ray") is not None:
        put("ray", "enabled", True)
        put("ray", "address", given("ray") or None)
    put(None, "voices_dir", given("voices_dir"))
    return Settings(**overrides)  # pydantic-settings deep-merges init values over the env


def build_app(settings: Settings, engines: Engines) -> FastAPI:
    """The full app: ``create_app`` with the browser chat, telephony, RTVI WebSocket and OpenAI Realtime routers."""
    from agent.server import chat, create_app, realtime, rtvi, telephony

    return create_app(settings, engines, routers=[chat.router, telephony.router, rtvi.router, realtime.router])


def _say(message: str) -> None:
    print(f"duplex: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except Exception as e:  # pydantic ValidationError: a bad flag or env value
        _say(f"bad settings: {e}")
        return 2
    from agent.settings import unknown_env_vars

    for name in unknown_env_vars():
        _say(f"warning: {name} names no setting; it is ignored (see agent/settings.py for the names)")

    import uvicorn

    from pipelines.engines import Engines, ModelUnavailable, load_engines

    engines = Engines()
    app = build_app(settings, engines)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=args.log_level,
        ws_max_size=max(16 << 20, settings.server.max_message_bytes * 2),
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    failure: list[str] = []

    def load() -> None:
        t0 = time.perf_counter()
        try:
            load_engines(settings, engines=engines, progress=_say)
            _say(
                f"models ready in {time.perf_counter() - t0:.1f} s; open http://{settings.server.host}:"
                f"{settings.server.port}/"
            )
        except ModelUnavailable as e:
            failure.append(str(e))
            _say(f"ERROR: {e}")
            _say("choose another engine (--tts espeak, --stt pocketsphinx, --llm local) or make the model available")
            server.should_exit = True
        except Exception as e:  # anything else: same outcome, with the type for the bug report
            failure.append(f"{type(e).__name__}: {e}")
            _say(f"ERROR: loading the models failed: {type(e).__name__}: {e}")
            server.should_exit = True

    loader = threading.Thread(target=load, name="duplex-model-loader", daemon=True)
    _say(f"serving on http://{settings.server.host}:{settings.server.port} (models load in the background)")
    loader.start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    finally:
        loader.join(timeout=5)
        engines.close()  # a Ray instance this process started stops with it
    return EXIT_MODEL_UNAVAILABLE if failure else 0
