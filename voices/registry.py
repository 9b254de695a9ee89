"""The voice registry: voice folders shipped in this package plus the user's own, each described by ``manifest.json``.

A voice folder ``<id>/`` holds ``manifest.json`` (``VoiceManifest``), the reference clip and ``cache/`` (engines keep
computed prompts there: it is passed as ``VoiceSpec.cache_dir``). Shipped voices live next to this module and are
read-only; user voices live in a folder the caller names (``duplex serve``: ``--voices-dir``).

Storage choice: ``add`` decodes any format and rate ``processors.audio.load_audio`` reads (WAV, FLAC, OGG, MP3, WebM
from browsers, M4A) and stores the clip as a 24 kHz mono 16-bit WAV (``reference.wav``). One format on disk means every
engine reads references cheaply and alike, and 24 kHz is Qwen3-TTS's own rate, so nothing is lost that the model uses.
The original upload is not kept.

Writes are atomic: a new voice is built in a dot-prefixed temp folder beside its final place and renamed into place
only when complete; a deleted voice is renamed to a dot-prefixed trash folder first. Dot-prefixed folders are never
listed, and stale ones are swept on start, so no failure leaves a half-written voice visible.

Default voice, first match wins: the id passed as ``default_voice`` (``DUPLEX_TTS__VOICE``), a user voice with
``"default": true``, a shipped voice with ``"default": true``, the first voice by id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from processors.audio import (
    MAX_AUDIO_BYTES,
    REFERENCE_MAX_SECONDS,
    REFERENCE_MIN_SECONDS,
    TTS_SAMPLE_RATE,
    AudioError,
    AudioSource,
    AudioTooLongError,
    check_duration,
    load_audio,
    resample,
    write_wav,
)
from processors.tts_engine import VoiceError, VoiceSpec

log = logging.getLogger("duplex.voices")

SHIPPED_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
REFERENCE_NAME = "reference.wav"
CACHE_NAME = "cache"
STORED_SAMPLE_RATE = TTS_SAMPLE_RATE
ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
MAX_NAME_CHARS = 80
MAX_DESCRIPTION_CHARS = 500
MAX_TRANSCRIPT_CHARS = 1_000
MAX_LANGUAGE_CHARS = 32
SILENCE_PEAK = 1e-3  # a clip whose peak stays below this (-60 dBFS) is treated as silent
STALE_TEMP_SECONDS = 3600.0  # temp/trash folders older than this are swept at start


class VoiceRegistryError(VoiceError):
    """A registry operation that cannot be done; the message says why."""


class VoiceNotFoundError(VoiceRegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VoiceExistsError(VoiceRegistryError):
    pass


class VoiceReadOnlyError(VoiceRegistryError):
    pass


class InvalidVoiceError(VoiceRegistryError):
    """Bad input for a new voice: id, name, transcript or audio."""


class InvalidVoiceAudioError(InvalidVoiceError):
    """The reference clip itself is unusable: undecodable, too short or long, too large, silent."""


def _check_text(value: str | None, what: str, limit: int) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {limit}")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise ValueError(f"{what} contains control characters")
    return value


def validate_voice_id(voice_id: Any) -> str:
    """A slug: 1-64 of a-z, 0-9, '-', '_', starting and ending with a letter or digit."""
    if not isinstance(voice_id, str) or not ID_RE.match(voice_id):
        raise InvalidVoiceError(
            f"invalid voice id {voice_id!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return voice_id


def slugify(text: str) -> str:
    """A voice id derived from a display name ('Ada's Voice' -> 'ada-s-voice')."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64].strip("-")
    return slug or "voice"


class VoiceManifest(BaseModel):
    """``manifest.json`` of a voice folder."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    id: str
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    language: str = Field("English", min_length=1, max_length=MAX_LANGUAGE_CHARS)
    description: str = ""
    reference: str = REFERENCE_NAME  # file name inside the folder
    transcript: str | None = None  # exact words of the reference; None -> speaker-embedding-only cloning
    x_vector_only: bool = False
    is_default: bool = Field(False, alias="default")
    source: str = ""  # where the audio came from
    licence: str = ""  # under which terms the audio may be used and shipped

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        try:
            return validate_voice_id(v)
        except InvalidVoiceError as e:
            raise ValueError(str(e)) from None

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str) -> str:
        if not v or v in (".", "..") or "/" in v or "\\" in v or v.startswith("."):
            raise ValueError(f"reference must be a plain file name inside the voice folder, got {v!r}")
        return v

    @field_validator("name", "language", "source", "licence")
    @classmethod
    def _plain(cls, v: str) -> str:
        if any(ord(c) < 32 and c not in "\t\n" for c in v):
            raise ValueError("contains control characters")
        return v

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        return _check_text(v, "description", MAX_DESCRIPTION_CHARS) or ""

    @field_validator("transcript")
    @classmethod
    def _transcript(cls, v: str | None) -> str | None:
        return _check_text(v or None, "transcript", MAX_TRANSCRIPT_CHARS)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True), indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Voice:
    """One registered voice."""

    manifest: VoiceManifest
    folder: Path
    shipped: bool
    cache_dir: Path

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def language(self) -> str:
        return self.manifest.language

    @property
    def reference_path(self) -> Path:
        return self.folder / self.manifest.reference

    def spec(self) -> VoiceSpec:
        """What engines take (``engine.load_voice(voice.spec())``)."""
        m = self.manifest
        return VoiceSpec(
            id=m.id,
            name=m.name,
            language=m.language,
            reference_audio=self.reference_path,
            transcript=m.transcript,
            x_vector_only=m.x_vector_only or not m.transcript,
            cache_dir=self.cache_dir,
        )


class VoiceRegistry:
    """Shipped + user voice folders (see module docstring). Thread-safe: one lock serialises reads and writes.

    The folders are rescanned on every call, so voices copied in by hand appear without a restart (a scan reads a
    few small JSON files).
    """

    def __init__(
        self,
        user_dir: str | Path | None,
        *,
        shipped_dir: str | Path | None = SHIPPED_DIR,
        default_voice: str | None = None,
        max_bytes: int = MAX_AUDIO_BYTES,
    ):
        self.user_dir = Path(user_dir).expanduser() if user_dir else None
        self.shipped_dir = Path(shipped_dir) if shipped_dir else None
        self.default_voice = default_voice or None
        self.max_bytes = int(max_bytes)
        self._lock = threading.RLock()
        self._warned: set[tuple[str, float]] = set()
        self._sweep()

    # --- reading -----------------------------------------------------------------------------------
    def list(self) -> list[Voice]:
        """Every usable voice: shipped first, then the user's, each sorted by id."""
        with self._lock:
            return list(self._scan().values())

    def get(self, voice_id: str) -> Voice:
        with self._lock:
            voices = self._scan()
        voice = voices.get(voice_id) if isinstance(voice_id, str) else None
        if voice is None:
            raise VoiceNotFoundError(f"voice {voice_id!r} not found; known voices: {', '.join(voices) or 'none'}")
        return voice

    def __contains__(self, voice_id: object) -> bool:
        with self._lock:
            return isinstance(voice_id, str) and voice_id in self._scan()

    def default(self) -> Voice:
        with self._lock:
            return self._default(self._scan())

    def default_id(self) -> str:
        return self.default().id

    def _default(self, voices: dict[str, Voice]) -> Voice:
        if not voices:
            raise VoiceNotFoundError("no voices are registered")
        if self.default_voice:
            if self.default_voice in voices:
                return voices[self.default_voice]
            self._warn_once(
                f"default:{self.default_voice}",
                0.0,
                "configured default voice %r not found; using the registry's default",
                self.default_voice,
            )
        for shipped in (False, True):
            flagged = [v for v in voices.values() if v.shipped == shipped and v.manifest.is_default]
            if flagged:
                return flagged[0]
        return next(iter(voices.values()))

    def _scan(self) -> dict[str, Voice]:
        voices: dict[str, Voice] = {}
        for root, shipped in ((self.shipped_dir, True), (self.user_dir, False)):
            if root is None or not root.is_dir():
                continue
            for folder in sorted(root.iterdir()):
                if folder.name.startswith(".") or not folder.is_dir() or not (folder / MANIFEST_NAME).is_file():
                    continue
                voice = self._read(folder, shipped)
                if voice is None:
                    continue
                if voice.id in voices:
                    self._warn_once(
                        str(folder),
                        0.0,
                        "ignoring voice folder %s: id %r is taken by %s",
                        folder,
                        voice.id,
                        voices[voice.id].folder,
                    )
                    continue
                voices[voice.id] = voice
        return voices

    def _read(self, folder: Path, shipped: bool) -> Voice | None:
        path = folder / MANIFEST_NAME
        try:
            mtime = path.stat().st_mtime
            data = path.read_bytes()
        except OSError as e:
            self._warn_once(str(path), 0.0, "ignoring voice folder %s: %s", folder, e)
            return None
        try:
            manifest = VoiceManifest.model_validate_json(data)
        except ValidationError as e:
            self._warn_once(
                str(path), mtime, "ignoring voice folder %s: bad %s: %s", folder, MANIFEST_NAME, _first_error(e)
            )
            return None
        if manifest.id != folder.name:
            self._warn_once(
                str(path),
                mtime,
                "ignoring voice folder %s: manifest id %r differs from the folder name",
                folder,
                manifest.id,
            )
            return None
        if not (folder / manifest.reference).is_file():
            self._warn_once(
                str(path),
                mtime,
                "ignoring voice %r: reference file %s is missing",
                manifest.id,
                folder / manifest.reference,
            )
            return None
        return Voice(manifest, folder, shipped, self._cache_dir_for(folder, manifest.id, shipped))

    def _cache_dir_for(self, folder: Path, voice_id: str, shipped: bool) -> Path:
        # an installed package folder may be read-only: shipped voices then cache under the user dir
        if shipped and not os.access(folder, os.W_OK) and self.user_dir is not None:
            return self.user_dir / ".cache" / voice_id
        return folder / CACHE_NAME

    def _warn_once(self, key: str, stamp: float, msg: str, *args: Any) -> None:
        if (key, stamp) not in self._warned:
            self._warned.add((key, stamp))
            log.warning(msg, *args)

    # --- writing -----------------------------------------------------------------------------------
    def add(
        self,
        audio: AudioSource,
        *,
        name: str,
        voice_id: str | None = None,
        transcript: str | None = None,
        language: str = "English",
        description: str = "",
        default: bool = False,
        source: str = "user upload",
        licence: str = "",
    ) -> Voice:
        """Validate and store a new user voice; returns it. ``voice_id`` None -> derived from ``name`` (made unique).

        The audio must decode, last 3-30 s, not be silent, and be at most ``max_bytes`` encoded (a longer clip is
        refused from its header, or as soon as decoding passes 30 s). With a transcript
        the engine clones in-context (better); without one it uses only the speaker embedding (``x_vector_only``).
        Raises ``InvalidVoiceError`` (bad input), ``VoiceExistsError``, ``VoiceRegistryError`` (no user dir).
        """
        if self.user_dir is None:
            raise VoiceRegistryError("no user voice folder is configured")
        name = (name or "").strip() if isinstance(name, str) else name
        transcript = (transcript or "").strip() or None if isinstance(transcript, (str, type(None))) else transcript
        if voice_id is not None:
            validate_voice_id(voice_id)
        try:  # validate the fields before decoding any audio
            manifest = VoiceManifest(
                id=voice_id or slugify(name if isinstance(name, str) else ""),
                name=name,
                language=language,
                description=description or "",
                transcript=transcript,
                x_vector_only=transcript is None,
                default=bool(default),
                source=source,
                licence=licence,
            )
        except ValidationError as e:
            raise InvalidVoiceError(_first_error(e)) from None
        try:
            decoded = load_audio(audio, max_bytes=self.max_bytes, max_seconds=REFERENCE_MAX_SECONDS)
            check_duration(decoded, REFERENCE_MIN_SECONDS, REFERENCE_MAX_SECONDS, "the reference clip")
        except AudioTooLongError as e:
            got = f"{e.seconds:.2f} s" if e.seconds is not None else f"more than {e.max_seconds:g} s"
            raise InvalidVoiceAudioError(
                f"the reference clip must be {REFERENCE_MIN_SECONDS:g}-{REFERENCE_MAX_SECONDS:g} s long, got {got}"
            ) from None
        except AudioError as e:
            raise InvalidVoiceAudioError(str(e)) from None
        if float(np.max(np.abs(decoded.samples))) < SILENCE_PEAK:
            raise InvalidVoiceAudioError("the reference clip is silent")
        samples = np.clip(resample(decoded.samples, decoded.sample_rate, STORED_SAMPLE_RATE), -1.0, 1.0)

        with self._lock:
            voices = self._scan()
            if voice_id is None:  # derived ids are made unique; chosen ones must be free
                base, n = manifest.id, 2
                while manifest.id in voices or (self.user_dir / manifest.id).exists():
                    manifest.id = f"{base[:60]}-{n}"
                    n += 1
            elif voice_id in voices or (self.user_dir / voice_id).exists():
                owner = voices.get(voice_id)
                where = "a shipped voice" if owner is not None and owner.shipped else "a voice"
                raise VoiceExistsError(
                    f"{where} with id {voice_id!r} already exists; pick another id or delete it first"
                )
            self.user_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{manifest.id}-", dir=self.user_dir))
            try:
                write_wav(tmp / REFERENCE_NAME, samples, STORED_SAMPLE_RATE)
                (tmp / CACHE_NAME).mkdir()
                _write_file(tmp / MANIFEST_NAME, manifest.to_json())
                _fsync_dir(tmp)
                os.rename(tmp, self.user_dir / manifest.id)  # atomic; fails rather than merging into an existing dir
                _fsync_dir(self.user_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if manifest.is_default:
                self._clear_user_defaults(except_id=manifest.id)
            voice = self._read(self.user_dir / manifest.id, False)
        assert voice is not None
        log.info(
            "voice %r added (%.1f s reference, %s)",
            voice.id,
            decoded.seconds,
            "x-vector only" if voice.manifest.x_vector_only else "with transcript",
        )
        return voice

    def set_default(self, voice_id: str) -> Voice:
        """Make a voice the default (for user voices, the manifest flag; for a shipped one, clear the users' flags).
        ``DUPLEX_TTS__VOICE`` still wins over this."""
        with self._lock:
            voice = self.get(voice_id)
            if not voice.shipped:
                _write_file_atomic(
                    voice.folder / MANIFEST_NAME, voice.manifest.model_copy(update={"is_default": True}).to_json()
                )
            self._clear_user_defaults(except_id=voice.id)
            return self.get(voice_id)

    def _clear_user_defaults(self, except_id: str) -> None:
        for v in self._scan().values():
            if not v.shipped and v.id != except_id and v.manifest.is_default:
                _write_file_atomic(
                    v.folder / MANIFEST_NAME, v.manifest.model_copy(update={"is_default": False}).to_json()
                )

    def delete(self, voice_id: str) -> None:
        """Remove a user voice (its folder, reference and cache). Shipped voices refuse (``VoiceReadOnlyError``)."""
        with self._lock:
            voice = self.get(voice_id)
            if voice.shipped:
                raise VoiceReadOnlyError(f"voice {voice_id!r} ships with Duplex and cannot be deleted")
            trash = voice.folder.parent / f".trash-{voice.id}-{uuid.uuid4().hex[:8]}"
            os.rename(voice.folder, trash)  # the voice disappears atomically; removal of the files may lag
            shutil.rmtree(trash, ignore_errors=True)
        log.info("voice %r deleted", voice_id)

    def _sweep(self) -> None:
        """Remove temp/trash folders left by a process that died mid-write."""
        if self.user_dir is None or not self.user_dir.is_dir():
            return
        now = time.time()
        for p in self.user_dir.iterdir():
            if p.name.startswith((".tmp-", ".trash-")) and p.is_dir():
                try:
                    if p.name.startswith(".trash-") or now - p.stat().st_mtime > STALE_TEMP_SECONDS:
                        shutil.rmtree(p, ignore_errors=True)
                except OSError:
                    pass


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    field = ".".join(str(x) for x in err.get("loc", ())) or "value"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{field}: {msg}"


def _write_file(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_file_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
