"""/api/v1/voices on a real server (espeak): add, list, use in /api/v1/speak, delete; bad uploads refused with clear
errors and nothing left on disk."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from processors.audio import load_audio, resample
from voices.registry import SHIPPED_DIR

from .conftest import collect_speak, open_session, recv_json

CLIP = SHIPPED_DIR / "default" / "reference.wav"  # 6.86 s, 24 kHz, free to ship
TRANSCRIPT = json.loads((SHIPPED_DIR / "default" / "manifest.json").read_text())["transcript"]
UPLOAD_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("api-voices")


@pytest.fixture(scope="module")
def live(espeak, server_factory, voices_dir):
    return server_factory(espeak, voices_dir=voices_dir, max_upload_bytes=UPLOAD_LIMIT)


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def speech(rate: int) -> np.ndarray:
    audio = load_audio(CLIP)
    return resample(audio.samples, audio.sample_rate, rate)


def on_disk(voices_dir) -> list[str]:
    return sorted(p.name for p in voices_dir.iterdir()) if voices_dir.exists() else []


def post(live, audio: bytes | None, filename: str = "clip.wav", **fields) -> httpx.Response:
    files = {"audio": (filename, audio, "application/octet-stream")} if audio is not None else None
    data = {k: v for k, v in fields.items() if v is not None}
    if files is None:
        files = {"dummy": ("", b"")} if not data else None
    return httpx.post(live.http + "/api/v1/voices", files=files, data=data, timeout=30)


def listed(live) -> dict:
    r = httpx.get(live.http + "/api/v1/voices")
    assert r.status_code == 200
    return r.json()


def test_list_has_the_shipped_default(live):
    body = listed(live)
    assert body["default"] == "default"
    (voice,) = [v for v in body["voices"] if v["id"] == "default"]
    assert voice["isDefault"] is True and voice["builtIn"] is True and voice["language"] == "English"
    assert set(voice) >= {"id", "name", "language", "description", "isDefault"}
    assert "BSD" in voice["licence"] or "Flite" in voice["licence"]


async def test_add_list_use_delete(live, voices_dir):
    before = on_disk(voices_dir)
    r = post(live, CLIP.read_bytes(), name="My Voice", transcript=TRANSCRIPT, id="mine", description="test voice")
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == "/api/v1/voices/mine"
    assert body == {
        **body,
        "id": "mine",
        "name": "My Voice",
        "language": "English",
        "description": "test voice",
        "isDefault": False,
        "builtIn": False,
        "hasTranscript": True,
    }
    assert "mine" in [v["id"] for v in listed(live)["voices"]]
    assert httpx.get(live.http + "/api/v1/voices/mine").json()["id"] == "mine"
    folder = voices_dir / "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["cache", "manifest.json", "reference.wav"]
    info = sf.info(str(folder / "reference.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (24_000, 1, "PCM_16")
    assert info.duration == pytest.approx(load_audio(CLIP).seconds, abs=0.01)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["transcript"] == TRANSCRIPT and manifest["x_vector_only"] is False and manifest["default"] is False

    # use it
    ws, _, started = await open_session(live.speak_url, {"voice": "mine"})
    try:
        assert started["voice"] == "mine"
        await ws.send(json.dumps({"type": "speak", "text": "Speaking with my own voice."}))
        frames, _, end = await collect_speak(ws)
        assert end["type"] == "complete" and frames
    finally:
        await ws.close()

    # delete it
    r = httpx.delete(live.http + "/api/v1/voices/mine")
    assert r.status_code == 204 and r.content == b""
    assert "mine" not in [v["id"] for v in listed(live)["voices"]]
    assert on_disk(voices_dir) == before
    r = httpx.get(live.http + "/api/v1/voices/mine")
    assert r.status_code == 404 and r.json()["error"]["code"] == "VOICE_NOT_FOUND"
    assert httpx.delete(live.http + "/api/v1/voices/mine").status_code == 404
    # a deleted voice is not found by new sessions
    ws, _, _ = await open_session(live.speak_url)
    try:
        await ws.send(json.dumps({"type": "start", "voice": "mine", "pacing": "asap"}))
        assert (await recv_json(ws))["code"] == "VOICE_NOT_FOUND"
        assert (await recv_json(ws))["voice"] == "default"
    finally:
        await ws.close()


def test_any_format_and_rate_is_stored_as_24k_wav(live, voices_dir):
    flac = encode(speech(44_100), 44_100, "FLAC")
    r = post(live, flac, "clip.flac", name="Flac Voice", language="german", transcript=TRANSCRIPT)
    assert r.status_code == 201, r.text
    assert r.json()["language"] == "German"  # canonical spelling from the engine
    vid = r.json()["id"]
    assert vid == "flac-voice"
    info = sf.info(str(voices_dir / vid / "reference.wav"))
    assert info.samplerate == 24_000 and info.duration == pytest.approx(6.86, abs=0.02)
    ogg = encode(speech(16_000), 16_000, "OGG", "VORBIS")
    r = post(live, ogg, "clip.ogg", name="Flac Voice")  # same name: id made unique; no transcript: x-vector only
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "flac-voice-2" and r.json()["hasTranscript"] is False
    assert json.loads((voices_dir / "flac-voice-2" / "manifest.json").read_text())["x_vector_only"] is True
    for v in ("flac-voice", "flac-voice-2"):
        assert httpx.delete(live.http + f"/api/v1/voices/{v}").status_code == 204


def test_user_default_voice(live, voices_dir):
    r = post(live, CLIP.read_bytes(), name="Boss", id="boss", default="true", transcript=TRANSCRIPT)
    assert r.status_code == 201 and r.json()["isDefault"] is True
    body = listed(live)
    assert body["default"] == "boss"
    assert [v["id"] for v in body["voices"] if v["isDefault"]] == ["boss"]
    assert live.ctx.registry.default().id == "boss"
    assert httpx.delete(live.http + "/api/v1/voices/boss").status_code == 204
    assert listed(live)["default"] == "default"


def test_shipped_voice_cannot_be_deleted(live):
    r = httpx.delete(live.http + "/api/v1/voices/default")
    assert r.status_code == 403
    assert r.json()["error"] == {
        "code": "VOICE_READ_ONLY",
        "message": "voice 'default' ships with Duplex and cannot be deleted",
    }
    assert (SHIPPED_DIR / "default" / "reference.wav").is_file()


def _seconds(s: float, rate: int = 16_000) -> bytes:
    t = np.arange(int(s * rate)) / rate
    return encode((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


BAD_UPLOADS = [
    # (case, audio, fields, status, code, message fragment)
    # the decoders' own words, without a Python object repr or an errno
    ("garbage", b"this is not audio" * 100, {}, 422, "INVALID_AUDIO", "could not decode the audio (tried WAV, FLAC,"),
    ("empty", b"", {}, 422, "INVALID_AUDIO", "empty"),
    ("too-short", _seconds(1.0), {}, 422, "INVALID_AUDIO", "must be 3-30 s long, got 1.00 s"),
    ("too-long", _seconds(31.0, 8_000), {}, 422, "INVALID_AUDIO", "must be 3-30 s long, got 31.00 s"),
    ("silent", encode(np.zeros(5 * 16_000, np.float32), 16_000), {}, 422, "INVALID_AUDIO", "silent"),
    ("too-large", b"\x00" * (UPLOAD_LIMIT + 100_000), {}, 413, "PAYLOAD_TOO_LARGE", "limit"),
    ("no-audio", None, {}, 400, "INVALID_FIELD", "needs an 'audio' file field"),
    ("no-name", "clip", {"name": None}, 400, "INVALID_FIELD", "non-empty 'name'"),
    ("blank-name", "clip", {"name": "   "}, 400, "INVALID_FIELD", "non-empty 'name'"),
    ("bad-id", "clip", {"id": "Bad ID!"}, 400, "INVALID_FIELD", "invalid voice id 'Bad ID!'"),
    ("path-id", "clip", {"id": "../escape"}, 400, "INVALID_FIELD", "invalid voice id"),
    ("shipped-id", "clip", {"id": "default"}, 409, "VOICE_EXISTS", "shipped voice with id 'default' already exists"),
    ("language", "clip", {"language": "Klingon"}, 400, "INVALID_FIELD", "unsupported language 'Klingon'"),
    ("unknown-field", "clip", {"colour": "blue"}, 400, "INVALID_FIELD", "unknown form field(s) colour"),
    ("bad-default", "clip", {"default": "maybe"}, 400, "INVALID_FIELD", "'default' must be true or false"),
    ("long-transcript", "clip", {"transcript": "word " * 300}, 400, "INVALID_FIELD", "transcript"),
    ("control-chars", "clip", {"name": "bad\x01name"}, 400, "INVALID_FIELD", "control characters"),
]


@pytest.mark.parametrize("case,audio,fields,status,code,fragment", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_uploads_are_refused_and_leave_nothing(live, voices_dir, case, audio, fields, status, code, fragment):
    before = on_disk(voices_dir)
    fields = {"name": "Test", "transcript": TRANSCRIPT, **fields}
    r = post(live, CLIP.read_bytes() if audio == "clip" else audio, **fields)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert "object at 0x" not in error["message"] and "Errno" not in error["message"], error
    assert on_disk(voices_dir) == before
    assert [v["id"] for v in listed(live)["voices"]] == ["default"]


def test_audio_as_a_text_field_and_non_multipart_bodies(live, voices_dir):
    r = httpx.post(live.http + "/api/v1/voices", data={"audio": "not a file", "name": "x"})
    assert r.status_code == 400 and "needs an 'audio' file field" in r.json()["error"]["message"]
    r = httpx.post(live.http + "/api/v1/voices", json={"name": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_FIELD"

    def chunked():
        yield b"--x\r\n"

    r = httpx.post(
        live.http + "/api/v1/voices", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 411 and r.json()["error"]["code"] == "LENGTH_REQUIRED"
    r = httpx.post(
        live.http + "/api/v1/voices",
        content=b"--x\r\nbroken",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 400
    assert on_disk(voices_dir) == []


def test_parallel_adds_with_one_id(live, voices_dir):
    data = CLIP.read_bytes()
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: post(live, data, name="Race", id="race").status_code, range(5)))
    assert sorted(results) == [201, 409, 409, 409, 409]
    assert on_disk(voices_dir) == ["race"]
    assert httpx.delete(live.http + "/api/v1/voices/race").status_code == 204
    assert on_disk(voices_dir) == []
