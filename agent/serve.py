"""``duplex serve``: one FastAPI/uvicorn app with every entry point (browser chat at ``/``, ``/api/offer``, ``/ws``,
``/telephony/twilio``, ``/api/v1/speak``, ``/v1/audio/speech``, ``/api/v1/voices``, ``/healthz``, ``/readyz``,
``/metrics``). With ``--ray`` the TTS and STT engines run as Ray Serve deployments and this process stays the agent:
transports, VAD, turn logic, the LLM client (docs/deploy.md).

Settings: flags over ``DUPLEX_*`` env vars over defaults (``agent.settings``). The port is bound before anything
else (a port in use is one line that suggests ``--port``); then the server answers ``/healthz`` at once and loads the
models in a background thread (progress lines on stderr, which model and how far on ``/healthz`` and the page;
``MODEL_LOADING`` until ready). When a chosen model cannot be had, it prints why and exits with status 1. Ctrl-C
stops the live sessions, waits for their engine threads and exits 0.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from agent.settings import Settings
    from pipelines.engines import Engines

EXIT_MODEL_UNAVAILABLE = 1
EXIT_CANNOT_LISTEN = 3  # uvicorn's status for a failed bind, kept for scripts that test it
THREADS_JOIN_S = 10.0  # engines stop within one step once cancelled; this is a generous bound
ENGINE_THREADS = ("duplex-", "tts-")  # name prefixes of the threads engines and adapters start


def configure(parser: argparse.ArgumentParser) -> None:
    from agent.logs import LEVELS
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
    add(
        "--ice-server",
        action="append",
        metavar="URL",
        help="STUN/TURN server for WebRTC beyond the LAN, for the page and the server (repeat for several): "
        "stun:host:port or turn:USER:CREDENTIAL@host:port[?transport=tcp]",
    )
    add(
        "--log-level",
        default="info",
        choices=list(LEVELS),
        help="level for every log: ours, pipecat's and uvicorn's (default info)",
    )


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
    put("server", "ice_servers", given("ice_server"))
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


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts; ``OSError`` with a message that says what to do."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {host!r}: {e.strerror} (--host takes an address such as 127.0.0.1)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise OSError(
                f"port {port} on {host} is already in use (another duplex serve?): stop that, or choose another "
                f"port with --port {port + 1 if port else 8001}"
            ) from None
        if e.errno == errno.EACCES:
            raise OSError(f"no permission to listen on port {port}: choose a port above 1023 (--port 8000)") from None
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def page_url(settings: Settings, port: int) -> str:
    """The page's address as a person on this machine opens it, with the token when auth is on."""
    from urllib.parse import quote

    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"  # the microphone needs a secure context: localhost is one, a LAN address is not
    elif ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{port}/"
    token = settings.server.auth_token
    return f"{url}?token={quote(token, safe='')}" if token else url


def _finish_threads(deadline_s: float) -> list[str]:
    """Wait for the engines' threads (``ENGINE_THREADS``) that cancelled sessions leave behind; their names if any
    remain.

    A thread still inside torch or onnxruntime when the interpreter tears down aborts the process ("terminate called
    without an active exception"), so the process waits for them, or exits without teardown if they do not end."""
    deadline = time.monotonic() + deadline_s
    for thread in threading.enumerate():
        if thread is threading.current_thread() or not thread.name.startswith(ENGINE_THREADS):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t.name.startswith(ENGINE_THREADS) and t.is_alive()]


def run(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging

    configure_logging(args.log_level)
    try:
        settings = settings_from_args(args)
    except Exception as e:  # pydantic ValidationError: a bad flag or env value
        _say(f"bad settings: {e}")
        return 2
    from agent.settings import unknown_env_vars

    for name in unknown_env_vars():
        _say(f"warning: {name} names no setting; it is ignored (see agent/settings.py for the names)")
    try:
        sock = listen(settings.server.host, settings.server.port)
    except OSError as e:
        _say(f"ERROR: {e}")
        return EXIT_CANNOT_LISTEN
    port = sock.getsockname()[1]

    import uvicorn

    from pipelines.engines import Engines, ModelUnavailable, load_engines
    from processors.catalogue import KINDS

    engines = Engines(expect=KINDS)
    app = build_app(settings, engines)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        ws_max_size=max(16 << 20, settings.server.max_message_bytes * 2),
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    failure: list[str] = []
    url = page_url(settings, port)

    def load() -> None:
        t0 = time.perf_counter()
        try:
            load_engines(settings, engines=engines, progress=_say)
            _say(f"models ready in {time.perf_counter() - t0:.1f} s; open {url}")
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
    _say(f"serving on {url} (models load in the background; progress on /healthz and the page)")
    loader.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    finally:
        sock.close()
    engines.close()  # a Ray instance this process started stops with it
    code = EXIT_MODEL_UNAVAILABLE if failure else 0
    left = _finish_threads(THREADS_JOIN_S)
    if left:  # e.g. Ctrl-C while a model loads: a load cannot be interrupted, and teardown under it aborts
        _say(f"stopped while {', '.join(sorted(set(left)))} still ran")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
