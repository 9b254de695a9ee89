"""The page at ``/`` in headless Debian chromium, driven over the Chrome DevTools protocol (``websockets``): the fake
microphone plays a recorded utterance (``--use-file-for-fake-audio-capture``), the page talks to the agent over
WebRTC (``/api/offer``), and one full turn must happen: the user's words transcribed, the bot's reply played and
shown, its latency listed. Then "clone my voice" by upload: the voice is added, selected, and a new session speaks
with it. A screenshot is kept in ``artifacts/`` (gitignored). Skipped when chromium is absent.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from processors.audio import write_wav
from testkit.clips import clip_path
from testkit.clips import speech as clip_speech

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("DUPLEX_ARTIFACTS_DIR", ROOT / "artifacts"))
CLONE_TRANSCRIPT = (
    "The meeting has been moved to Thursday afternoon, so please send the report to everyone before lunch."
)
CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]


class CDP:
    """A minimal Chrome DevTools protocol client on one page target."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def eval(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


def fake_mic_wav(path: Path) -> Path:
    """3 s of silence (the session may take a while to start on a busy machine: speech before it is lost), the
    question, then 40 s of silence (chromium loops the file)."""
    rate = 48000
    speech = clip_speech("flite_weather_kal16.wav", rate)
    audio = np.concatenate([np.zeros(int(3.0 * rate), np.float32), speech, np.zeros(40 * rate, np.float32)])
    write_wav(path, audio, rate)
    return path


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
async def test_browser_turn(agent_server, tmp_path, transport):
    wav = fake_mic_wav(tmp_path / "mic.wav")
    profile = tmp_path / "profile"
    url = f"http://127.0.0.1:{agent_server.port}/"
    t_start = time.monotonic()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1200,900",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            cdp = CDP(ws)
            for _ in range(200):  # the target may still show about:blank at first
                if await cdp.eval(
                    "typeof $ === 'function' && document.readyState === 'complete' && $('voice').options.length > 0"
                ):
                    break
                await asyncio.sleep(0.1)
            assert await cdp.eval("$('engines').textContent.includes('espeak')"), await cdp.eval(
                "$('engines').textContent"
            )
            await cdp.eval(f"$('transport').value = '{transport}'; $('connect').click(); true")
            t0 = time.monotonic()
            events: list[dict] = []
            while time.monotonic() - t0 < 60:
                events = await cdp.eval("window.duplexEvents")
                states = [e.get("state") for e in events if e["type"] == "state"]
                if "speaking" in states and states[-1] == "listening" and any(e["type"] == "latency" for e in events):
                    break
                await asyncio.sleep(0.25)
            turn_s = time.monotonic() - t0
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = await cdp.call("Page.captureScreenshot", format="png")
            (ARTIFACTS / f"browser_{transport}_turn.png").write_bytes(base64.b64decode(shot["data"]))
            page_text = await cdp.eval("$('transcript').innerText")
            await cdp.eval("$('hangup').click(); true")
            if transport == "webrtc":
                await clone_by_upload(cdp)
    finally:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:  # a throwaway headless profile: nothing to lose
            proc.kill()
            proc.wait(5)

    assert any(e["type"] == "ready" for e in events), events
    user = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["role"] == "user" and e["final"])
    bot = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["role"] == "bot")
    latency = [e for e in events if e["type"] == "latency"]
    assert "weather" in user.lower(), (user, events)
    assert bot.strip() and latency, events
    assert "weather" in page_text.lower() and bot.split()[0] in page_text, page_text
    print(
        f"\nbrowser {transport} turn: voice-to-voice {latency[0]['voiceToVoiceMs']} ms; user={user!r}; bot={bot!r}; "
        f"screenshot {ARTIFACTS / f'browser_{transport}_turn.png'}; chromium up after {t0 - t_start:.1f} s, "
        f"turn {turn_s:.1f} s"
    )
    for _ in range(100):  # the slot is freed when the peer goes away
        if not agent_server.ctx.sessions.active:
            break
        await asyncio.sleep(0.1)
    assert not agent_server.ctx.sessions.active


async def clone_by_upload(cdp: CDP) -> None:
    """ "Clone my voice" by upload, with its transcript: the voice is added and selected; a new session uses it."""
    clip = clip_path("flite_meeting_rms.wav")
    doc = await cdp.call("DOM.getDocument")
    node = await cdp.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#clone-file")
    await cdp.call("DOM.setFileInputFiles", files=[str(clip)], nodeId=node["nodeId"])
    await cdp.eval(
        "$('clone-name').value = 'Browser clone'; $('clone-transcript').value = "
        + json.dumps(CLONE_TRANSCRIPT)
        + "; $('clone-save').disabled = false; "
        "$('clone-save').click(); true"
    )
    status = ""
    for _ in range(100):
        status = await cdp.eval("$('clone-status').textContent")
        if "added" in status or ":" in status:
            break
        await asyncio.sleep(0.1)
    assert "added" in status, status
    cloned = await cdp.eval("$('voice').value")
    assert cloned == "browser-clone", cloned
    await cdp.eval("window.duplexEvents = []; $('connect').click(); true")
    ready = None
    for _ in range(200):
        ready = next((e for e in await cdp.eval("window.duplexEvents") if e["type"] == "ready"), None)
        if ready:
            break
        await asyncio.sleep(0.1)
    await cdp.eval("$('hangup').click(); true")
    assert ready and ready["voice"] == cloned, ready
