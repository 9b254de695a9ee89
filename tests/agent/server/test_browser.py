"""The page at ``/`` in headless Debian chromium (``browser.Chromium``), against real servers with the fallback
engines. Every flow is driven and checked through the page, as a person uses it:

* a spoken turn over WebRTC and over the ``/ws`` fallback (the fake microphone plays a recorded question): live
  transcripts, states (each once), the latency breakdown shown as text, the level meter moving, mute, the
  microphone picker, the fallback note; then a typed turn through the same pipeline; clone my voice by upload (with
  an undecodable file first: the error reads as words, not a Python repr); screenshots at desktop and 390 px widths
  (``artifacts/``), and nothing wider than a 390 px phone;
* a page opened over plain http under another host name: it says the microphone needs https or localhost, and a
  typed conversation still works, in the language picked;
* a server with ``--auth-token``: the page asks for the token, refuses a wrong one, keeps the right one for the tab
  (also when it comes as ``?token=``, which leaves the address bar);
* an LLM endpoint that fails after the start: the page shows the error and goes on listening; the next turn works;
* the server going away mid-call (WebRTC and ``/ws``): the page says so and stops;
* ``duplex serve`` loading its TTS model from a (local) hub: the page shows which model and how far the download
  is, with Start disabled until the server accepts sessions.

Skipped when chromium is absent.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from agent.serve import build_app
from agent.settings import LLMSettings, ServerSettings, Settings, STTSettings, TTSSettings
from pipelines.engines import load_engines
from testkit.clips import clip_path
from testkit.local_servers import ChatEndpoint

from .browser import CHROMIUM, SPEECH_AFTER_S, Chromium, fake_mic_wav
from .conftest import LiveServer, server_like

CLONE_TRANSCRIPT = (
    "The meeting has been moved to Thursday afternoon, so please send the report to everyone before lunch."
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]


def repeats(states: list[str]) -> list[int]:
    return [i for i in range(1, len(states)) if states[i] == states[i - 1]]


async def events(page: Chromium) -> list[dict]:
    return await page.eval("window.duplexEvents")


async def wait_reply(page: Chromium, after: int, timeout: float = 60) -> list[dict]:
    """Events from index ``after`` until the bot has spoken and listens again (a whole reply)."""

    async def done() -> list[dict] | None:
        new = (await events(page))[after:]
        states = [e.get("state") for e in new if e["type"] == "state"]
        if "speaking" in states and states[-1] == "listening":
            return new
        return None

    deadline = time.monotonic() + timeout
    while (new := await done()) is None:
        assert time.monotonic() < deadline, (await events(page))[after:]
        await asyncio.sleep(0.25)
    return new


# --- a conversation, spoken and typed -----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["webrtc", "ws"])
async def test_browser_turn(agent_server, tmp_path, transport):
    url = f"http://127.0.0.1:{agent_server.port}/"
    t_start = time.monotonic()
    async with Chromium(url, tmp_path, mic=fake_mic_wav(tmp_path / "mic.wav", lead_s=SPEECH_AFTER_S)) as page:
        await page.wait("!$('connect').disabled && $('voice').options.length > 0")
        assert "espeak" in await page.eval("$('engines').textContent")
        fallback = await page.eval("$('notice-fallback').hidden ? '' : $('notice-fallback').innerText")
        assert "Fallback engines are live" in fallback and "espeak" in fallback and "pocketsphinx" in fallback
        assert await page.eval("document.querySelector('link[rel=icon]').href.endsWith('/static/favicon.svg')")
        await page.eval(f"$('transport').value = '{transport}'; $('connect').click(); true")
        t0 = time.monotonic()
        await page.wait("window.duplexEvents.some((e) => e.type === 'ready')", 30)
        # the level meter follows the microphone while the question plays (it starts SPEECH_AFTER_S after Start)
        level = 0.0
        for _ in range(int(SPEECH_AFTER_S * 10) + 100):
            level = max(level, await page.eval("window.duplexLevel"))
            if level > 0.2:
                break
            await asyncio.sleep(0.1)
        spoken = await wait_reply(page, 0)
        turn_s = time.monotonic() - t0
        await page.wait("!!$('latencies').querySelector('.parts')")
        latency_text = await page.eval("$('latencies').innerText")
        mics = await page.eval("[...$('mic').options].map((o) => o.textContent)")

        # mute: the meter drops to zero while muted
        await page.click("mute")
        muted = await page.eval("$('mute').getAttribute('aria-pressed')")
        await asyncio.sleep(0.3)
        muted_level = await page.eval("window.duplexLevel")
        await page.click("mute")

        # another microphone, mid-call: the track is replaced and the meter follows it
        await page.eval(
            "$('mic').value = $('mic').options[$('mic').options.length - 1].value; "
            "$('mic').dispatchEvent(new Event('change')); true"
        )
        picked = await page.eval("$('mic').options[$('mic').selectedIndex].textContent")
        switched = await page.wait(
            f"session && session.mic.getAudioTracks()[0].label === {json.dumps(picked)} && window.duplexLevel >= 0", 10
        )

        # a typed turn, through the same pipeline
        typed_at = len(await events(page))
        await page.type_turn("What is the capital of France?")
        typed = await wait_reply(page, typed_at)

        desktop = await page.screenshot(f"page_{transport}_desktop")
        phone = await page.screenshot(f"page_{transport}_390px", width=390)
        overflow = await page.overflow_at(390)
        page_text = await page.eval("$('transcript').innerText")
        await page.click("hangup")
        await page.wait("window.duplexState === 'idle' && !$('connect').disabled")
        if transport == "webrtc":
            await clone_by_upload(page)
        all_events = await events(page)

    assert level > 0.2, level
    assert any(e["type"] == "ready" and e["language"] == "English" for e in all_events), all_events
    user = " ".join(e["text"] for e in spoken if e["type"] == "transcript" and e["role"] == "user" and e["final"])
    bot = " ".join(e["text"] for e in spoken if e["type"] == "transcript" and e["role"] == "bot")
    latency = [e for e in spoken if e["type"] == "latency"]
    assert "weather" in user.lower(), (user, spoken)
    assert bot.strip() and latency, spoken
    assert "weather" in page_text.lower() and bot.split()[0] in page_text, page_text
    for step in ("voice-to-voice", "VAD stop", "turn end", "STT", "LLM first sentence", "TTS first audio"):
        assert step in latency_text, latency_text
    states = [e["state"] for e in all_events if e["type"] == "state"]
    assert not repeats(states), states  # every state once
    assert len(mics) >= 2 and any("Fake" in m for m in mics), mics
    assert muted == "true" and muted_level == 0, (muted, muted_level)
    assert switched and picked.startswith("Fake"), picked
    favicon = httpx.get(url + "favicon.ico", timeout=10)
    assert favicon.status_code == 200 and favicon.headers["content-type"].startswith("image/svg+xml")
    typed_user = [e for e in typed if e["type"] == "transcript" and e["role"] == "user"]
    assert typed_user and typed_user[0]["text"] == "What is the capital of France?" and typed_user[0]["typed"]
    assert any(e["type"] == "transcript" and e["role"] == "bot" for e in typed), typed
    assert "What is the capital of France?" in page_text
    assert overflow == 0, f"the page is {overflow} px wider than a 390 px phone"
    print(
        f"\nbrowser {transport}: voice-to-voice {latency[0]['voiceToVoiceMs']} ms; user={user!r}; bot={bot!r}; "
        f"turn {turn_s:.1f} s after chromium started at {t0 - t_start:.1f} s; screenshots {desktop} {phone}"
    )
    for _ in range(100):  # the slot is freed when the peer goes away
        if not agent_server.ctx.sessions.active:
            break
        await asyncio.sleep(0.1)
    assert not agent_server.ctx.sessions.active


async def clone_by_upload(page: Chromium) -> None:
    """ "Clone my voice" by upload: an undecodable file is refused in words; a clip with its transcript is added and
    selected, and a new session speaks with it."""

    async def upload(path: str, name: str, transcript: str) -> str:
        doc = await page.cdp.call("DOM.getDocument")
        node = await page.cdp.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#clone-file")
        await page.cdp.call("DOM.setFileInputFiles", files=[path], nodeId=node["nodeId"])
        await page.eval(
            f"$('clone-name').value = {json.dumps(name)}; $('clone-transcript').value = {json.dumps(transcript)}; "
            "$('clone-status').textContent = ''; $('clone-save').disabled = false; $('clone-save').click(); true"
        )
        return await page.wait(
            "(s => s.includes('added') || s.includes(':') ? s : '')($('clone-status').textContent)", 20
        )

    garbage = page.tmp / "not-audio.wav"
    garbage.write_bytes(b"this is not audio at all " * 200)
    status = await upload(str(garbage), "Broken", "nothing")
    assert status.startswith("INVALID_AUDIO: could not decode the audio") and "object at 0x" not in status, status
    assert "Format not recognised" in status, status

    status = await upload(str(clip_path("flite_meeting_rms.wav")), "Browser clone", CLONE_TRANSCRIPT)
    assert "added" in status, status
    cloned = await page.eval("$('voice').value")
    assert cloned == "browser-clone", cloned
    await page.eval("window.duplexEvents = []; $('connect').click(); true")
    ready = await page.wait("window.duplexEvents.find((e) => e.type === 'ready')", 20)
    await page.click("hangup")
    assert ready["voice"] == cloned, ready


# --- off localhost: no secure context -------------------------------------------------------------------------------
async def test_plain_http_under_a_host_name_says_what_to_do_and_typing_works(agent_server, tmp_path):
    url = f"http://duplex.test:{agent_server.port}/"
    flags = ("--host-resolver-rules=MAP duplex.test 127.0.0.1",)
    async with Chromium(url, tmp_path, flags=flags) as page:
        assert await page.eval("window.isSecureContext") is False
        notice = await page.wait("!$('notice-insecure').hidden && $('notice-insecure').innerText")
        assert "needs a secure page" in notice and "https" in notice and "localhost" in notice, notice
        local = await page.eval("$('insecure-local').href")
        assert local == f"http://localhost:{agent_server.port}/", local
        assert await page.eval("$('connect').textContent") == "Start (typing only)"
        await page.wait("!$('connect').disabled && $('language').options.length > 1")
        languages = await page.eval("[...$('language').options].map((o) => o.value)")
        other = next(lang for lang in ("German", "French", "Spanish") if lang in languages)
        await page.eval(f"$('language').value = '{other}'; $('connect').click(); true")
        ready = await page.wait("window.duplexEvents.find((e) => e.type === 'ready')", 30)
        await page.wait("!$('text').disabled")
        await page.type_turn("Hello, who are you?")
        reply = await wait_reply(page, 0)
        shot = await page.screenshot("page_insecure_context")
        errors = [e for e in await events(page) if e["type"] == "error"]
        await page.click("hangup")
    assert ready["language"] == other, ready
    assert any(e["type"] == "transcript" and e["role"] == "bot" for e in reply), reply
    assert not errors, errors
    print(f"\ninsecure context: typed turn answered in {other}; screenshot {shot}")


# --- auth in the browser ----------------------------------------------------------------------------------------------
async def test_the_page_asks_for_the_token(agent_server, tmp_path):
    server = server_like(agent_server, tmp_path / "voices", auth_token="s3cret-token")
    try:
        async with Chromium(f"http://127.0.0.1:{server.port}/", tmp_path) as page:
            why = await page.wait("!$('notice-auth').hidden && $('notice-auth').innerText")
            assert "needs an access token" in why, why
            assert await page.eval("$('connect').disabled && $('voice').options.length === 0")
            await page.eval("$('token-input').value = 'wrong'; $('token-save').click(); true")
            why = await page.wait("!$('notice-auth').hidden && $('token-why').textContent.includes('not valid')")
            await page.eval("$('token-input').value = 's3cret-token'; $('token-save').click(); true")
            await page.wait("$('notice-auth').hidden && $('voice').options.length > 0 && !$('connect').disabled")
            assert await page.eval("sessionStorage.getItem('duplex-token')") == "s3cret-token"
            await page.eval("$('transport').value = 'ws'; $('connect').click(); true")
            await page.wait("window.duplexEvents.some((e) => e.type === 'ready')", 30)
            await page.click("hangup")

            # the address the server prints: the token moves into the tab's storage, out of the address bar
            await page.eval("sessionStorage.clear(); true")
            await page.navigate(f"http://127.0.0.1:{server.port}/?token=s3cret-token")
            await page.wait("$('voice').options.length > 0 && !$('connect').disabled")
            assert await page.eval("location.search") == ""
            assert await page.eval("$('notice-auth').hidden")
    finally:
        server.stop()


# --- failures reach the person ----------------------------------------------------------------------------------------
async def test_an_llm_failure_shows_on_the_page_and_the_session_goes_on(tmp_path):
    with ChatEndpoint(models=["scripted"]) as llm:
        settings = Settings(
            voices_dir=tmp_path / "voices",
            tts=TTSSettings(engine="espeak"),
            stt=STTSettings(engine="pocketsphinx"),
            llm=LLMSettings(backend=llm.url, model="scripted"),
            server=ServerSettings(idle_timeout_s=60),
        )
        engines = load_engines(settings)
        server = LiveServer(build_app(settings, engines)).start()
        try:
            health = httpx.get(f"{server.http}/healthz", timeout=10).json()
            assert health["engines"]["llm"]["endpoint"]["reachable"] is True, health
            async with Chromium(f"http://127.0.0.1:{server.port}/", tmp_path) as page:
                await page.wait("!$('connect').disabled")
                await page.click("connect")
                await page.wait("!$('text').disabled")
                llm.fail = True  # the endpoint breaks after the server started
                await page.type_turn("What is the weather like?")
                error = await page.wait("window.duplexEvents.find((e) => e.type === 'error')", 30)
                shown = await page.wait("$('transcript').querySelector('.msg.error')?.innerText")
                await page.wait("window.duplexState === 'listening'")
                llm.fail = False
                after = len(await events(page))
                await page.type_turn("And tomorrow?")
                reply = await wait_reply(page, after)
                await page.click("hangup")
        finally:
            server.stop()
    assert error["code"] == "LLM_ERROR" and "the LLM step failed" in error["message"], error
    assert "LLM_ERROR" in shown, shown
    bot = " ".join(e["text"] for e in reply if e["type"] == "transcript" and e["role"] == "bot")
    assert "Paris is sunny today." in bot, reply
    assert server.ctx.metrics.errors.value(kind="browser_webrtc", code="LLM_ERROR") >= 1


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
async def test_the_page_notices_the_server_going_away(agent_server, tmp_path, transport):
    server = server_like(agent_server, tmp_path / "voices")
    stopped = False
    try:
        async with Chromium(f"http://127.0.0.1:{server.port}/", tmp_path) as page:
            await page.wait("!$('connect').disabled")
            await page.eval(f"$('transport').value = '{transport}'; $('connect').click(); true")
            await page.wait("window.duplexEvents.some((e) => e.type === 'ready')", 30)
            t0 = time.monotonic()
            await asyncio.to_thread(server.stop)
            stopped = True
            await page.wait("window.duplexState === 'disconnected'", 20)
            noticed_s = time.monotonic() - t0
            said = await page.eval("$('transcript').innerText")
            await page.wait("!$('notice-offline').hidden", 20)
            assert await page.eval("$('connect').disabled && $('hangup').disabled")
    finally:
        if not stopped:
            server.stop()
    assert any(
        why in said
        for why in ("the server ended the session", "the server is restarting or stopping", "server is going away")
    ), said
    print(f"\n{transport}: the page noticed the server stopping after {noticed_s:.1f} s")


# --- model loading as the page shows it ------------------------------------------------------------------------------
async def test_the_page_follows_model_loading(tiny_qwen_dir, tmp_path):
    """``duplex serve --tts qwen3`` downloading a (tiny) model from a hub: which model, how far, Start disabled
    until the server accepts sessions; ``/readyz`` 503 until then."""
    from testkit.local_servers import LocalHub

    from .test_serve_cli import start, stop

    size = sum(p.stat().st_size for p in tiny_qwen_dir.rglob("*") if p.is_file())
    with LocalHub({"duplex-test/qwen3-tiny": tiny_qwen_dir}, bytes_per_s=size / 6) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        args = ("--tts", "qwen3", "--tts-model", "duplex-test/qwen3-tiny", "--stt", "pocketsphinx", "--device", "cpu")
        proc, port = start(tmp_path, *args, env=env)
        base = f"http://127.0.0.1:{port}"
        seen: list[str] = []
        readyz: list[int] = []
        try:
            for _ in range(200):
                try:
                    httpx.get(base + "/healthz", timeout=2)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    await asyncio.sleep(0.1)
            async with Chromium(base + "/", tmp_path) as page:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    text = await page.eval("$('notice-loading').hidden ? '' : $('notice-loading').innerText")
                    disabled = await page.eval("$('connect').disabled")
                    readyz.append(httpx.get(base + "/readyz", timeout=5).status_code)
                    if text:
                        seen.append(text)
                        assert disabled, text
                        if "downloading" in text and "%" in text and not any("%" in s for s in seen[:-1]):
                            await page.screenshot("page_loading_desktop")
                            await page.screenshot("page_loading_390px", width=390)
                    elif not disabled:
                        break
                    await asyncio.sleep(0.25)
                assert not await page.eval("$('connect').disabled"), seen[-3:]
                health = await page.eval("window.duplexHealth")
        finally:
            code = stop(proc)
    log = (tmp_path / "serve.log").read_text()
    downloading = [s for s in seen if "TTS qwen3 (duplex-test/qwen3-tiny): downloading" in s and "%" in s]
    assert downloading, seen
    percents = [int(s.split("downloading ")[1].split(" %")[0]) for s in downloading]
    assert any(0 < p < 100 for p in percents), percents
    assert 503 in readyz and readyz[-1] == 200, readyz
    assert health["engines"]["tts"]["model"] == "duplex-test/qwen3-tiny" and health["ready"], health
    assert health["engines"]["tts"]["download"]["receivedBytes"] == size, health
    assert code == 0, log[-3000:]
    print(f"\nloading seen on the page: {percents} % of {size / 1e6:.1f} MB, then ready")
