"""Headless Debian chromium driven over the Chrome DevTools protocol (``websockets``), for the page tests.

``Chromium(url, tmp, mic=wav)`` starts a throwaway profile with a fake microphone that plays ``wav`` (chromium loops
it); ``await page.eval(js)``, ``await page.wait(js)`` (polls until the expression is truthy), ``await
page.screenshot(name, width=390)`` (kept in ``ARTIFACTS``, ``DUPLEX_ARTIFACTS_DIR`` or ``artifacts/``).
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
from typing import Any

import httpx
import numpy as np
import websockets

from processors.audio import write_wav
from testkit.clips import speech as clip_speech

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("DUPLEX_ARTIFACTS_DIR", ROOT / "artifacts"))
CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None
)
PHONE = {"width": 390, "height": 844}
# The fake microphone starts its file when the page opens it; the question comes this long after, so that the session
# (offer, pipeline, ICE and DTLS) is up before it, even on a busy 2-core machine.
SPEECH_AFTER_S = 8.0


def fake_mic_wav(path: Path, clip: str | None = "flite_weather_kal16.wav", lead_s: float = 1.5) -> Path:
    """``lead_s`` of silence, the clip (none: silence only), then 40 s of silence."""
    rate = 48000
    parts = [np.zeros(int(lead_s * rate), np.float32)]
    if clip:
        parts.append(clip_speech(clip, rate))
    parts.append(np.zeros(40 * rate, np.float32))
    write_wav(path, np.concatenate(parts), rate)
    return path


class CDP:
    """A minimal Chrome DevTools protocol client on one page target."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict:
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


class Chromium:
    """One headless chromium with one page, as an async context manager."""

    def __init__(
        self,
        url: str,
        tmp: Path,
        *,
        mic: Path | None = None,
        flags: tuple[str, ...] = (),
        size: tuple[int, int] = (1200, 900),
    ):
        self.url, self.tmp, self.flags, self.size = url, tmp, flags, size
        self.mic = mic or fake_mic_wav(tmp / "silence.wav", clip=None)
        self.proc: subprocess.Popen | None = None
        self._ws: Any = None
        self.cdp: CDP | None = None

    async def __aenter__(self) -> Chromium:
        profile = self.tmp / f"profile-{time.monotonic_ns()}"
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={self.mic}",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={self.size[0]},{self.size[1]}",
                *self.flags,
                self.url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, self.proc.stderr.read().decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=None)
        self.cdp = CDP(self._ws)
        await self.wait("typeof $ === 'function' && document.readyState === 'complete'", 20)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # a throwaway headless profile: nothing to lose
                self.proc.kill()
                self.proc.wait(5)

    async def eval(self, expression: str) -> Any:
        return await self.cdp.eval(expression)

    async def wait(self, expression: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
        """Poll until ``expression`` is truthy; its value. An AssertionError with the page's state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.cdp.eval(expression)
            except RuntimeError:  # the page is still loading its script
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                state = await self.cdp.eval(
                    "JSON.stringify({state: window.duplexState, text: document.body.innerText.slice(0, 3000), "
                    "events: (window.duplexEvents || []).slice(-15)})"
                )
                raise AssertionError(f"timed out waiting for {expression!r}; page: {state}")
            await asyncio.sleep(interval)

    async def navigate(self, url: str) -> None:
        await self.cdp.call("Page.navigate", url=url)
        await asyncio.sleep(0.3)
        await self.wait("typeof $ === 'function' && document.readyState === 'complete'", 20)

    async def click(self, element_id: str) -> None:
        await self.eval(f"$('{element_id}').click(); true")

    async def type_turn(self, text: str) -> None:
        """Type into the page's text box and send it, as a person would."""
        await self.eval(f"$('text').value = {json.dumps(text)}; $('send').click(); true")

    async def screenshot(self, name: str, width: int | None = None) -> Path:
        """A full-page PNG at the window's width, or at ``width`` as a phone (mobile emulation)."""
        if width is not None:
            await self.cdp.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=PHONE["height"], deviceScaleFactor=2,
                mobile=True,
            )  # fmt: skip
            await asyncio.sleep(0.3)
        height = int(await self.eval("Math.ceil(document.documentElement.scrollHeight)"))
        view_width = int(await self.eval("window.innerWidth"))
        shot = await self.cdp.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": view_width, "height": height, "scale": 1},
        )
        if width is not None:
            await self.cdp.call("Emulation.clearDeviceMetricsOverride")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def overflow_at(self, width: int) -> int:
        """How many CSS pixels the page is wider than a ``width``-px phone screen (0 = it fits)."""
        await self.cdp.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=PHONE["height"], deviceScaleFactor=2, mobile=True
        )
        await asyncio.sleep(0.3)
        wide = int(await self.eval("document.documentElement.scrollWidth"))
        await self.cdp.call("Emulation.clearDeviceMetricsOverride")
        return max(0, wide - width)
