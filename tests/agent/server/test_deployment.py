"""``duplex serve`` deployed off localhost, with real Debian servers in front and a real browser.

* **TLS reverse proxy**: Debian's nginx with a self-signed certificate, configured with ``examples/deploy/nginx.conf``
  exactly as documented, in front of ``duplex serve`` (a subprocess). Headless chromium opens
  ``https://duplex.test:<port>/`` (a non-localhost name, resolved with ``--host-resolver-rules``; the certificate
  trusted by its key with ``--ignore-certificate-errors-spki-list``): the page is a secure context, and a spoken turn
  completes over WebRTC (signalling through the proxy) and over ``/ws`` (a WebSocket upgraded through the proxy).
* **TURN**: Debian's coturn on loopback with a user and password, given to the server as ``--ice-server
  turn:USER:PASSWORD@host:port``. The page (``?relay=1``: relay candidates only) and the server's own peer both
  allocate on it; a typed turn's reply reaches the page through the relay.

Skipped with a message when chromium, nginx or coturn is missing (``apt-get install -y chromium nginx coturn``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .browser import CHROMIUM, ROOT, SPEECH_AFTER_S, Chromium, fake_mic_wav
from .conftest import server_like
from .test_browser import wait_reply
from .test_serve_cli import start, stop, wait_ready

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
TURNSERVER = shutil.which("turnserver")
HOST = "duplex.test"

in_browser = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]


def browser_test(fn):
    for mark in in_browser:
        fn = mark(fn)
    return fn


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(tmp: Path, host: str) -> tuple[Path, Path, str]:
    """(certificate, key, base64 SHA-256 of the public key for ``--ignore-certificate-errors-spki-list``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert_path, key_path, base64.b64encode(hashlib.sha256(spki).digest()).decode()


def nginx_config(tmp: Path, listen: int, backend: int, cert: Path, key: Path) -> Path:
    """``examples/deploy/nginx.conf`` as documented, with this test's name, certificate and ports, inside a
    top-level configuration that runs nginx unprivileged in ``tmp``."""
    site = (ROOT / "examples" / "deploy" / "nginx.conf").read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;"),
        ("duplex.example.com;", f"{HOST};"),
        ("/etc/ssl/certs/duplex.example.com.pem", str(cert)),
        ("/etc/ssl/private/duplex.example.com.key", str(key)),
        ("http://127.0.0.1:8000", f"http://127.0.0.1:{backend}"),
    ):
        assert old in site, old
        site = site.replace(old, new)
    (tmp / "site.conf").write_text(site)
    temp = {name: tmp / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        "events { worker_connections 128; }\n"
        "http {\n"
        f"  access_log {tmp}/access.log;\n"
        f"  client_body_temp_path {temp['body']};\n  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        f"  include {tmp}/site.conf;\n"
        "}\n"
    )
    return conf


@browser_test
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")
async def test_behind_an_https_proxy_a_turn_completes_over_webrtc_and_ws(tmp_path):
    proxy_dir = tmp_path / "nginx"
    proxy_dir.mkdir()
    cert, key, spki = self_signed(proxy_dir, HOST)
    proc, backend = start(tmp_path, "--tts", "espeak", "--stt", "pocketsphinx", env={"DUPLEX_LLM__MAX_TOKENS": "24"})
    listen = free_port()
    conf = nginx_config(proxy_dir, listen, backend, cert, key)
    check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(proxy_dir)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(proxy_dir)], stderr=subprocess.PIPE)
    url = f"https://{HOST}:{listen}/"
    results: dict[str, list[dict]] = {}
    try:
        health, _, _ = await wait_ready(proc, f"http://127.0.0.1:{backend}", tmp_path)
        assert health["ready"], health
        flags = (f"--host-resolver-rules=MAP {HOST} 127.0.0.1", f"--ignore-certificate-errors-spki-list={spki}")
        mic = fake_mic_wav(tmp_path / "mic.wav", lead_s=SPEECH_AFTER_S)
        for transport in ("webrtc", "ws"):  # a fresh browser each: the fake microphone starts its file again
            async with Chromium(url, tmp_path, mic=mic, flags=flags) as page:
                assert await page.eval("location.protocol") == "https:"
                assert await page.eval("window.isSecureContext") is True
                assert await page.eval("$('notice-insecure').hidden")
                await page.wait("!$('connect').disabled && $('voice').options.length > 0", 30)
                await page.eval(f"$('transport').value = '{transport}'; $('connect').click(); true")
                t0 = time.monotonic()
                await page.wait("window.duplexEvents.some((e) => e.type === 'ready')", 30)
                print(f"\n{transport}: session ready {time.monotonic() - t0:.1f} s after Start")
                results[transport] = await wait_reply(page, 0, timeout=90)
                if transport == "webrtc":
                    shot = await page.screenshot("page_https_proxy")
                await page.click("hangup")
    finally:
        nginx.terminate()
        nginx.wait(10)
        code = stop(proc)
    access = (proxy_dir / "access.log").read_text()
    assert '"POST /api/offer' in access and '"GET /ws' in access and '" 101 ' in access, access
    for transport, events in results.items():
        user = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["role"] == "user" and e["final"])
        bot = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["role"] == "bot")
        latency = [e["voiceToVoiceMs"] for e in events if e["type"] == "latency"]
        heard = [(e["text"], e["final"]) for e in events if e["type"] == "transcript" and e["role"] == "user"]
        assert "weather" in user.lower() and bot.strip() and latency, (transport, heard, events)
        print(f"\nthrough nginx over https, {transport}: user={user!r} bot={bot!r} voice-to-voice {latency[0]} ms")
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log[-3000:]
    assert "No video transceiver" not in log and "Traceback" not in log, log[-3000:]
    print(f"screenshot {shot}")


@browser_test
@pytest.mark.skipif(TURNSERVER is None, reason="coturn is not installed (apt-get install -y coturn)")
async def test_webrtc_through_a_turn_server(agent_server, tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    relay_low = 40000 + (port % 20000)
    turn = subprocess.Popen(
        [
            TURNSERVER, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
            f"--min-port={relay_low}", f"--max-port={relay_low + 200}", "--lt-cred-mech", "--user=duplex:turn-pass",
            f"--realm={HOST}", "--no-tls", "--no-dtls", "--allow-loopback-peers", "--no-cli", "--fingerprint",
            "--log-file=stdout", "--simple-log", f"--pidfile={tmp_path}/turnserver.pid",
        ],
        stdout=open(tmp_path / "turn.log", "wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    ice = f"turn:duplex:turn-pass@127.0.0.1:{port}"
    server = server_like(agent_server, tmp_path / "voices", ice_servers=[ice])
    try:
        time.sleep(0.5)
        assert turn.poll() is None, (tmp_path / "turn.log").read_text()[-2000:]
        config = httpx.get(f"{server.http}/api/config", timeout=10).json()
        assert config["iceServers"] == [
            {"urls": f"turn:127.0.0.1:{port}", "username": "duplex", "credential": "turn-pass"}
        ], config
        async with Chromium(f"http://127.0.0.1:{server.port}/?relay=1", tmp_path) as page:
            await page.wait("!$('connect').disabled")
            await page.click("connect")
            await page.wait("!$('text').disabled", 40)
            await page.type_turn("Hello, can you hear me?")
            reply = await wait_reply(page, 0)
            stats = await page.eval(
                """(async () => {
                  const stats = [...(await session.pc.getStats()).values()];
                  const pair = stats.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
                  const local = stats.find((s) => s.id === pair.localCandidateId);
                  const audio = stats.find((s) => s.type === 'inbound-rtp' && s.kind === 'audio');
                  return {local: local.candidateType, received: audio.bytesReceived,
                          answer: session.pc.remoteDescription.sdp};
                })()"""
            )
            await page.click("hangup")
    finally:
        server.stop()
        turn.terminate()
        turn.wait(10)
    assert stats["local"] == "relay", stats["local"]  # the page's media went through the TURN server
    assert stats["received"] > 10_000, stats["received"]  # and the bot's reply came back that way
    assert "typ relay" in stats["answer"], stats["answer"]  # the server's peer allocated on it too
    assert any(e["type"] == "transcript" and e["role"] == "bot" for e in reply), reply
    print(f"\nthrough TURN: {stats['received']} bytes of bot audio received over a relay candidate")


def test_the_documented_nginx_config_is_valid(tmp_path):
    """Without a browser: nginx accepts ``examples/deploy/nginx.conf`` (names, paths and ports filled in)."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    cert, key, _ = self_signed(tmp_path, HOST)
    conf = nginx_config(tmp_path, free_port(), free_port(), cert, key)
    check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
