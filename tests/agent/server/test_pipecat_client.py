"""pipecat's own client SDK against ``duplex serve``: ``@pipecat-ai/client-js`` with
``@pipecat-ai/small-webrtc-transport`` (RTVI on the data channel of ``/api/offer``) and with
``@pipecat-ai/websocket-transport`` (RTVI in protobuf frames on ``/rtvi/ws``), installed from npm into a temporary
directory, bundled with esbuild (also from npm), and run in headless Debian chromium from a page on another origin (as
a client app would be), with the token and CORS: connect (client-ready -> bot-ready), one spoken turn with the user's
and the bot's transcripts, a barge-in while the bot speaks, a second reply, disconnect (the slot is freed).

The page's microphone is a WebAudio stream that plays speech clips when the test says so (``getUserMedia`` returns it),
so the barge-in lands while the bot is speaking whatever the CPU's speed. Skipped with a message where node/npm,
the npm registry or chromium is missing.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from agent.settings import LLMSettings, ServerSettings, Settings, STTSettings, TTSSettings
from testkit.clips import clip_path, speech

from .browser import CDP, CHROMIUM
from .conftest import LiveServer

CLIENT_DIR = Path(__file__).resolve().parent / "clients"
NPM = shutil.which("npm")
NPM_PACKAGES = [
    "@pipecat-ai/client-js",
    "@pipecat-ai/small-webrtc-transport",
    "@pipecat-ai/websocket-transport",
    "esbuild",
]
TOKEN = "client-sdk-token"
QUESTION = "flite_weather_kal16.wav"
INTERRUPTION = "flite_story_slt.wav"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
    pytest.mark.skipif(NPM is None, reason="npm is not installed (apt-get install -y nodejs npm)"),
]


@pytest.fixture(scope="module")
def client_page(tmp_path_factory) -> Path:
    """The client app, bundled: ``npm install`` into a temporary directory (never the repository), esbuild, and the
    speech clips beside it."""
    build = tmp_path_factory.mktemp("pipecat-client-npm")
    subprocess.run([NPM, "init", "-y"], cwd=build, check=True, capture_output=True)
    install = subprocess.run(
        [NPM, "install", "--no-audit", "--no-fund", "--loglevel=error", *NPM_PACKAGES],
        cwd=build,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        pytest.skip(f"npm install failed (no registry?): {install.stderr[-500:]}")
    page = tmp_path_factory.mktemp("pipecat-client-page")
    subprocess.run(
        [
            str(build / "node_modules" / ".bin" / "esbuild"),
            str(CLIENT_DIR / "rtvi_client.js"),
            "--bundle",
            "--format=iife",
            f"--outfile={page / 'bundle.js'}",
            "--log-level=warning",
        ],
        cwd=build,
        check=True,
        env={"NODE_PATH": str(build / "node_modules"), "PATH": str(Path(NPM).parent)},
        timeout=120,
    )
    shutil.copy(CLIENT_DIR / "index.html", page / "index.html")
    for clip in (QUESTION, INTERRUPTION):
        shutil.copy(clip_path(clip), page / clip)
    return page


@pytest.fixture(scope="module")
def page_server(client_page):
    """The client app's own origin: a static file server on another loopback port."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(client_page))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="pipecat-client-page", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def duplex_server(tmp_path_factory, page_server):
    """``duplex serve`` as ``build_app`` makes it, with the fallback engines, a token, and the page's origin allowed."""
    from agent.serve import build_app
    from pipelines.engines import load_engines

    settings = Settings(
        voices_dir=tmp_path_factory.mktemp("voices"),
        tts=TTSSettings(engine="espeak"),
        stt=STTSettings(engine="pocketsphinx"),
        llm=LLMSettings(backend="local", max_tokens=24, temperature=0.0),
        server=ServerSettings(idle_timeout_s=60, auth_token=TOKEN, cors_origins=[page_server]),
    )
    live = LiveServer(build_app(settings, load_engines(settings))).start()
    yield live
    live.stop()


async def wait_for(cdp: CDP, predicate, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    events: list[dict] = []
    while time.monotonic() < deadline:
        events = await cdp.eval("window.rtviEvents")
        if predicate(events):
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out; events: {[e for e in events if e['type'] != 'metrics']}")


def first_audio_seconds(live: LiveServer, kind: str, headers: dict | None = None) -> tuple[float, int]:
    """(sum, count) of the server's voice-to-voice histogram for ``kind``, from ``/metrics`` (recorded when a session
    ends)."""
    text = httpx.get(live.http + "/metrics", headers=headers, timeout=10).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in values:
            if line.startswith(f'duplex_first_audio_seconds_{part}{{kind="{kind}"}}'):
                values[part] = float(line.split()[-1])
    return values["sum"], int(values["count"])


def trailing_silence_ms(clip: str) -> float:
    """The silence after the clip's last sample above -34 dBFS, ms."""
    audio = speech(clip, 16000)
    return 1000 * (len(audio) - 1 - np.flatnonzero(np.abs(audio) > 0.02)[-1]) / 16000


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def after(events: list[dict], kind: str, then: str) -> bool:
    """Whether an event of type ``then`` follows the first ``kind`` event."""
    names = types(events)
    return kind in names and then in names[names.index(kind) :]


def answered(events: list[dict]) -> bool:
    """A final user transcript followed by the bot starting to speak."""
    finals = [i for i, e in enumerate(events) if e["type"] == "user-transcript" and e["final"]]
    return bool(finals) and "bot-started-speaking" in types(events[finals[0] :])


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
async def test_pipecat_client_js(duplex_server, page_server, tmp_path, transport):
    url = f"{page_server}/index.html?server={duplex_server.http}&token={TOKEN}&transport={transport}"
    kind = "browser_webrtc" if transport == "webrtc" else "rtvi_ws"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    sum0, n0 = first_audio_seconds(duplex_server, kind, auth)
    heard = "bot-audio-on" if transport == "webrtc" else "bot-started-speaking"
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            cdp = CDP(ws)
            for _ in range(200):
                if await cdp.eval("typeof window.connectClient === 'function'"):
                    break
                await asyncio.sleep(0.1)
            await cdp.eval("window.connectClient(); true")
            events = await wait_for(cdp, lambda ev: {"bot-ready", "connect-failed"} & set(types(ev)), 30)
            assert "bot-ready" in types(events), events
            ready = next(e for e in events if e["type"] == "bot-ready")
            assert ready["data"]["about"]["library"] == "pipecat-ai", ready
            assert duplex_server.ctx.sessions.active == 1

            # turn 1: the question; the bot answers
            await cdp.eval(f"window.say('{QUESTION}'); true")
            events = await wait_for(cdp, lambda ev: "bot-started-speaking" in types(ev), 40)
            events = await wait_for(cdp, lambda ev: after(ev, "said", heard), 10)
            await asyncio.sleep(0.3)

            # barge-in while the bot speaks: its speech stops, the new turn is transcribed and answered
            n_before = len(events)
            await cdp.eval(f"window.say('{INTERRUPTION}'); true")
            events = await wait_for(cdp, lambda ev: answered(ev[n_before:]) and after(ev[n_before:], "said", heard), 40)
            await cdp.eval("window.disconnectClient(); true")
            await wait_for(cdp, lambda ev: "disconnected" in types(ev), 10)
    finally:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    first, second = events[:n_before], events[n_before:]
    user1 = " ".join(e["text"] for e in first if e["type"] == "user-transcript" and e["final"])
    bot1 = " ".join(e["text"] for e in first if e["type"] == "bot-tts-text")
    assert "weather" in user1.lower(), first
    assert bot1.strip(), first
    assert any(e["type"] == "bot-output" for e in first), first
    assert any(e["type"] == "metrics" for e in first), "no RTVI metrics"
    # the barge-in: the user starts speaking and the bot stops, before the interruption clip has ended
    t_user = next(e["t"] for e in second if e["type"] == "user-started-speaking")
    t_stop = next(e["t"] for e in second if e["type"] == "bot-stopped-speaking")
    t_said = next(e["t"] for e in second if e["type"] == "said")
    assert t_stop < t_said, second
    user2 = " ".join(e["text"] for e in second if e["type"] == "user-transcript" and e["final"])
    assert user2.strip(), second
    # voice-to-voice at the client: the end of the question's speech -> the first loud bot audio on the WebRTC track
    # (websocket, whose audio plays through a worklet: -> bot-started-speaking, which comes with the first audio)
    said1 = next(e["t"] for e in first if e["type"] == "said") - trailing_silence_ms(QUESTION)
    heard1 = next(e["t"] for e in first if e["type"] == heard and e["t"] > said1)
    said2 = t_said - trailing_silence_ms(INTERRUPTION)
    heard2 = next((e["t"] for e in second if e["type"] == heard and e["t"] > said2), None)
    print(
        f"\npipecat client-js ({transport}): voice-to-voice {heard1 - said1:.0f} ms (turn 1)"
        + (f", {heard2 - said2:.0f} ms (after the barge-in)" if heard2 else "")
        + f"; barge-in: user-started-speaking -> bot-stopped-speaking {t_stop - t_user:.0f} ms; "
        f"user={user1!r} bot={bot1!r} user2={user2!r}"
    )
    deadline = time.monotonic() + 10
    while duplex_server.ctx.sessions.active and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not duplex_server.ctx.sessions.active, "the session slot was not freed"
    sum1, n1 = first_audio_seconds(duplex_server, kind, auth)
    if n1 > n0:
        mean_ms = 1000 * (sum1 - sum0) / (n1 - n0)
        print(f"server voice-to-voice ({kind}), mean of the session's {n1 - n0} turns: {mean_ms:.0f} ms")
