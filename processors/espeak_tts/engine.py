"""``EspeakEngine``: libespeak-ng from the ``espeakng-loader`` wheel (library + data) as the offline fallback TTS.

No model download, ~1000x faster than real time, robotic voice, no cloning. Plain Python on ctypes, no pipecat.

Thread-safety: libespeak-ng is ONE process-wide instance with global state (voice, rate, pitch, the synth callback),
and two threads synthesising at once crash the process. So every call into the library, from every
``EspeakEngine`` in the process, goes through one module-level lock; the library is initialised once per process,
and voice, rate and pitch are set again on every synthesis under that lock.

``stream`` splits the text into sentences and synthesises ONE sentence at a time, fully, under the lock (measured
uncontended: 0.3 ms for "Stop.", 2.4 ms for a 47-character sentence, 25 ms for 222 characters; sentences are capped
at 300 characters), into a list of the callback's 60 ms buffers; it then releases the lock and yields those buffers. So
the lock is never held across a ``yield``, other threads interleave sentence by sentence, and the first audio leaves
after one sentence's synthesis. ``cancel`` is checked by the synth callback (returning 1 aborts ``espeak_Synth``
mid-sentence within one buffer; ``espeak_Cancel`` does not work from another thread), between buffers and between
sentences.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from processors.audio import ESPEAK_SAMPLE_RATE
from processors.tts_engine import (
    MAX_TEXT_CHARS,
    TTSError,
    UnsupportedLanguageError,
    VoiceError,
    VoiceSpec,
    collect,
    resolve_language,
    validate_text,
)

log = logging.getLogger("duplex.espeak_tts")

# --- speak_lib.h -------------------------------------------------------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2
espeakINITIALIZE_DONT_EXIT = 0x8000  # report a bad data path instead of exit(1)
espeakCHARS_UTF8 = 1
espeakENDPAUSE = 0x1000  # a sentence-final pause (~0.3 s) after the text
POS_CHARACTER = 1
espeakRATE = 1
espeakPITCH = 3
EE_OK = 0
EE_NOT_FOUND = 2
espeakEVENT_LIST_TERMINATED = 0
espeakEVENT_WORD = 1

ESPEAK_BUFFER_MS = 60  # the callback's buffer; espeak-ng delivers 60 ms buffers for anything below 60 (measured)
DEFAULT_RATE = 175  # words per minute: espeak's default
MIN_RATE, MAX_RATE = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM
DEFAULT_PITCH = 50  # 0-100
MAX_SENTENCE_CHARS = 300  # longer "sentences" (no punctuation) are split at clauses, then words

# Language names (the Qwen3-TTS ten first, same spelling) -> espeak-ng language voices in the wheel's data.
LANGUAGE_VOICES: dict[str, str] = {
    "English": "en-us",
    "Chinese": "cmn",
    "Japanese": "ja",
    "Korean": "ko",
    "German": "de",
    "French": "fr",
    "Russian": "ru",
    "Portuguese": "pt-br",
    "Spanish": "es",
    "Italian": "it",
    "Dutch": "nl",
    "Polish": "pl",
    "Swedish": "sv",
    "Danish": "da",
    "Norwegian": "nb",
    "Finnish": "fi",
    "Czech": "cs",
    "Slovak": "sk",
    "Greek": "el",
    "Turkish": "tr",
    "Ukrainian": "uk",
    "Hungarian": "hu",
    "Romanian": "ro",
    "Bulgarian": "bg",
    "Catalan": "ca",
    "Arabic": "ar",
    "Hebrew": "he",
    "Hindi": "hi",
    "Vietnamese": "vi",
    "Indonesian": "id",
    "Malay": "ms",
    "Thai": "th",
    "Cantonese": "yue",
    "Persian": "fa",
    "Welsh": "cy",
    "Swahili": "sw",
}
SUPPORTED_LANGUAGES = tuple(LANGUAGE_VOICES)

_VARIANT = re.compile(r"^[A-Za-z0-9 _-]{1,40}$")
_ESPEAK_NAME = re.compile(r"^([A-Za-z]{2,4}/)?[A-Za-z0-9_-]{1,40}$")  # "en-gb", "en-GB-x-rp", "gmw/en"
# a language tag: a 2-3 letter language and optional subtags. Only these go to espeak_SetVoiceByProperties, which
# answers a name it cannot match with the voice that happens to be current ("alloy" -> whatever spoke last); its
# answer is then checked against the tag
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")

# Sentence ends: . ! ? … (optionally followed by a closing quote/bracket) then whitespace; CJK full stops
# anywhere; line breaks. "3.14" and "e.g.x" stay whole because a split needs whitespace after the stop.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’)\]])\s+|(?<=[。！？])\s*|\s*\n\s*")
_CLAUSE_SPLIT = re.compile(r"(?<=[,;:，；：、])\s*")


class InvalidOptionError(TTSError, ValueError):
    """A generation option espeak does not know or a value out of its range."""


@dataclass(frozen=True)
class EspeakVoice:
    """An espeak voice: the language it speaks by default (used for ``language='auto'``), an optional variant
    (timbre: ``m1``-``m8``, ``f1``-``f5``, ``klatt``, ``whisper``... from espeak-ng-data/voices/!v) and an optional
    dialect voice used when speaking its own language (an espeak language voice or tag: ``en-gb``, ``en-GB-x-rp``)."""

    language: str = "English"
    variant: str | None = None
    dialect: str | None = None
    id: str = ""  # the registry voice it stands in for, if any


@dataclass
class StreamStats:
    """What the last ``stream`` did; read it after the generator finishes."""

    sentences: int = 0  # sentences synthesised (fully or until aborted)
    chunks: int = 0
    samples: int = 0
    first_chunk_s: float | None = None  # from the call to the first chunk
    synth_ms: list[float] = field(default_factory=list)  # espeak_Synth time per sentence (inside the lock)
    lock_wait_ms: float = 0.0  # total time spent waiting for other threads' sentences
    total_s: float = 0.0
    cancelled: bool = False
    aborted_mid_sentence: bool = False  # the callback stopped espeak_Synth


# --- the process-wide library ----------------------------------------------------------------------------
_LOCK = threading.Lock()  # serialises EVERY call into libespeak-ng in this process
_lib: ctypes.CDLL | None = None
_init_error: str | None = None
_CALLBACK_T = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Job:
    """The sentence being synthesised: where the callback puts buffers, and when it must abort."""

    def __init__(self, cancel: threading.Event | None):
        self.cancel = cancel
        self.buffers: list[np.ndarray] = []
        self.aborted = False
        self.error: BaseException | None = None
        self.wait_ms = 0.0  # waiting for the lock (other threads' sentences)
        self.synth_ms = 0.0  # voice/parameter setup + espeak_Synth, inside the lock
        self.word_events: list[tuple[int, int]] = []  # (character position in the sentence from 1, sample)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_job: _Job | None = None  # set only while _LOCK is held
_current_voice: bytes | None = None  # the voice last set (only this module sets voices, under _LOCK)


def _on_audio(wav, numsamples, events) -> int:  # called by espeak_Synth, in the synthesising thread
    job = _job
    if job is None:
        return 1
    try:
        if numsamples > 0 and wav:
            job.buffers.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).astype(np.float32) / 32768.0)
        if events:  # the word starts espeak reports with this buffer (sample: from the start of the sentence)
            event = ctypes.cast(events, ctypes.POINTER(_Event))
            i = 0
            while event[i].type != espeakEVENT_LIST_TERMINATED:
                if event[i].type == espeakEVENT_WORD:
                    job.word_events.append((event[i].text_position, event[i].sample))
                i += 1
        if job.cancel is not None and job.cancel.is_set():
            job.aborted = True
            return 1
        return 0
    except BaseException as e:  # an exception must not cross into C; abort and re-raise outside
        job.error = e
        return 1


_callback = _CALLBACK_T(_on_audio)  # module-level: must outlive every espeak_Synth call


def data_path() -> Path:
    """The espeak-ng-data directory inside the espeakng-loader wheel."""
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


def _library() -> ctypes.CDLL:
    """The initialised library (initialised once per process); call with _LOCK held."""
    global _lib, _init_error
    if _lib is not None:
        return _lib
    if _init_error is not None:
        raise TTSError(_init_error)
    try:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        path = str(data_path()).encode()
    except (ImportError, OSError, RuntimeError) as e:
        _init_error = f"libespeak-ng is not available ({type(e).__name__}: {e}); pip install espeakng-loader"
        raise TTSError(_init_error) from e
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_T]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ESPEAK_BUFFER_MS, path, espeakINITIALIZE_DONT_EXIT)
    if rate != ESPEAK_SAMPLE_RATE or lib.espeak_SetVoiceByName(b"en") != EE_OK:
        _init_error = (
            f"libespeak-ng failed to initialise with data at {path.decode()} (returned {rate}; "
            f"expected {ESPEAK_SAMPLE_RATE} Hz and a working 'en' voice)"
        )
        raise TTSError(_init_error)
    lib.espeak_SetSynthCallback(_callback)
    _lib = lib
    return lib


def _synth_sentence(
    sentence: str, voice_name: str, rate: int, pitch: int, end_pause: bool, cancel: threading.Event | None
) -> _Job:
    """One sentence, synthesised fully (or until ``cancel``) under the process-wide lock."""
    global _job, _current_voice
    data = sentence.encode("utf-8") + b"\0"
    flags = espeakCHARS_UTF8 | (espeakENDPAUSE if end_pause else 0)
    job = _Job(cancel)
    t0 = time.perf_counter()
    with _LOCK:
        t1 = time.perf_counter()
        job.wait_ms = (t1 - t0) * 1000.0
        lib = _library()
        name = voice_name.encode()
        if name != _current_voice:  # switching languages reloads a dictionary (ru: 25-85 ms), so only on change
            _current_voice = None
            err = lib.espeak_SetVoiceByName(name)
            if err != EE_OK:
                raise VoiceError(f"espeak has no voice {voice_name!r} (error {err})")
            _current_voice = name
        lib.espeak_SetParameter(espeakRATE, rate, 0)  # global: set on every call
        lib.espeak_SetParameter(espeakPITCH, pitch, 0)
        _job = job
        try:
            err = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, flags, None, None)
        finally:
            _job = None
            job.synth_ms = (time.perf_counter() - t1) * 1000.0
    if job.error is not None:
        raise TTSError(f"espeak callback failed: {type(job.error).__name__}: {job.error}") from job.error
    if err != EE_OK:
        raise TTSError(f"espeak_Synth failed with error {err}")
    return job


class _EspeakVoiceStruct(ctypes.Structure):  # espeak_VOICE
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _resolve_voice_name(name: str) -> str | None:
    """A name ``espeak_SetVoiceByName`` accepts for ``name``: a voice file name (``en-GB-x-rp``, ``gmw/en``) as is,
    else a language tag (``en-gb``, ``fr-fr``) matched by ``espeak_SetVoiceByProperties``; None if neither."""
    global _current_voice
    with _LOCK:
        lib = _library()
        _current_voice = None
        if lib.espeak_SetVoiceByName(name.encode()) == EE_OK:
            return name
        if not _LANGUAGE_TAG.match(name):
            return None
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_EspeakVoiceStruct)]
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_EspeakVoiceStruct)
        wanted = _EspeakVoiceStruct(languages=name.encode())
        if lib.espeak_SetVoiceByProperties(ctypes.byref(wanted)) != EE_OK:
            return None
        current = lib.espeak_GetCurrentVoice().contents
        # ``languages`` starts with a priority byte, then the voice's language ("\x05en-gb"): a voice of another
        # language is espeak keeping the current voice for a tag it does not know ("ash"), not a match
        spoken = (current.languages or b"")[1:].decode(errors="replace").lower()
        if spoken.split("-")[0] != name.lower().split("-")[0]:
            return None
        return current.identifier.decode() if current.identifier else None


def _audio_only(timed: Iterator[tuple[np.ndarray, list[tuple[str, float]]]]) -> Iterator[np.ndarray]:
    with contextlib.closing(timed):  # closing the stream closes the synthesis now, not when it is collected
        for chunk, _ in timed:
            yield chunk


def _word_starts(sentence: str, events: list[tuple[int, int]]) -> list[tuple[str, int]]:
    """(word, start sample) for each whitespace-separated word of ``sentence``, from espeak's word events
    (character position from 1, sample). A word espeak reads as several ("3.14") starts at its first event; one it
    reports no event for (a lone dash) starts with the word before it."""
    out: list[tuple[str, int]] = []
    at = 0
    for match in re.finditer(r"\S+", sentence):
        inside = [sample for pos, sample in events if match.start() <= pos - 1 < match.end()]
        at = max(at, min(inside)) if inside else at
        out.append((match.group(), at))
    return out


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Sentences of ``text`` in order; a piece longer than ``max_chars`` is split at clauses, then at spaces."""
    out: list[str] = []
    for piece in _SENTENCE_SPLIT.split(text):
        piece = piece.strip()
        if piece:
            out.extend(_cap(piece, max_chars))
    return out


def _cap(piece: str, max_chars: int) -> list[str]:
    if len(piece) <= max_chars:
        return [piece]
    parts: list[str] = []
    current = ""
    for unit in _CLAUSE_SPLIT.split(piece):
        for word in [unit] if len(unit) <= max_chars else _words(unit, max_chars):
            if current and len(current) + 1 + len(word) > max_chars:
                parts.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
    if current:
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _words(unit: str, max_chars: int) -> list[str]:
    words = unit.split() if " " in unit.strip() else [unit]
    out = []
    for w in words:  # a single unbroken run (CJK without spaces): hard split
        out.extend(w[i : i + max_chars] for i in range(0, len(w), max_chars))
    return out


class EspeakEngine:
    """libespeak-ng as a ``TTSEngine`` (see module docstring for the process-wide lock)."""

    name = "espeak"
    sample_rate = ESPEAK_SAMPLE_RATE

    def __init__(self, *, rate: int = DEFAULT_RATE, pitch: int = DEFAULT_PITCH, max_text_chars: int = MAX_TEXT_CHARS):
        """``rate``: default speaking rate in words per minute (80-450); ``pitch``: default pitch 0-100.
        Initialises the library now (once per process), so a broken install fails here, not mid-call."""
        self.rate = _check_int("rate", rate, MIN_RATE, MAX_RATE)
        self.pitch = _check_int("pitch", pitch, 0, 100)
        self.max_text_chars = max_text_chars
        self.last_stats = StreamStats()
        self._warned_cloning = False
        self._by_id: dict[str, EspeakVoice] = {}  # voice_from_id cache: the adapter resolves the id every utterance
        with _LOCK:
            _library()

    @property
    def languages(self) -> tuple[str, ...]:
        return SUPPORTED_LANGUAGES

    # --- voices ------------------------------------------------------------------------------------
    def create_voice(
        self, language: str = "English", variant: str | None = None, dialect: str | None = None, *, id: str = ""
    ) -> EspeakVoice:
        """An espeak voice; ``variant`` (e.g. ``f3``) and ``dialect`` (e.g. ``en-gb``) are checked against the data."""
        lang = resolve_language(language, self.languages, allow_auto=False)
        if variant is not None:
            if (
                not isinstance(variant, str)
                or not _VARIANT.match(variant)
                or not (data_path() / "voices" / "!v" / variant).is_file()
            ):
                raise VoiceError(f"espeak has no voice variant {variant!r}; see {data_path() / 'voices' / '!v'}")
        if dialect is not None:
            if not isinstance(dialect, str) or not _ESPEAK_NAME.match(dialect):
                raise VoiceError(f"invalid espeak dialect voice {dialect!r}")
            resolved = _resolve_voice_name(dialect)
            if resolved is None:
                raise VoiceError(f"espeak has no language voice {dialect!r}; see {data_path() / 'lang'}")
            dialect = resolved
        return EspeakVoice(language=lang, variant=variant, dialect=dialect, id=id)

    def default_voice(self) -> EspeakVoice:
        return EspeakVoice()

    def voice_from_id(self, voice_id: str) -> EspeakVoice:
        """A voice from a short id, for runtime voice switching: ``[language-or-dialect][+variant]``, e.g.
        ``f3``, ``German``, ``German+m3``, ``en-gb``, ``en-gb+f3``. Raises ``VoiceError`` for anything else."""
        if not isinstance(voice_id, str) or not voice_id.strip():
            raise VoiceError(f"invalid espeak voice id {voice_id!r}")
        voice = self._by_id.get(voice_id)
        if voice is None:
            voice = self._by_id[voice_id] = self._voice_from_id(voice_id)
        return voice

    def _voice_from_id(self, voice_id: str) -> EspeakVoice:
        head, _, variant = voice_id.strip().partition("+")
        head, variant = head.strip(), (variant.strip() or None)
        if not head:
            return self.create_voice("English", variant, id=voice_id)
        try:
            return self.create_voice(resolve_language(head, self.languages, allow_auto=False), variant, id=voice_id)
        except UnsupportedLanguageError:
            pass
        if variant is None and (data_path() / "voices" / "!v" / head).is_file() and _VARIANT.match(head):
            return self.create_voice("English", head, id=voice_id)
        resolved = _resolve_voice_name(head) if _ESPEAK_NAME.match(head) else None
        if resolved is None:
            raise VoiceError(
                f"unknown espeak voice {voice_id!r}: use [language or espeak dialect][+variant], e.g. "
                f"'German+m3', 'en-gb', 'f3'"
            )
        code = resolved.split("/")[-1].split("-")[0].lower()
        language = next((name for name, v in LANGUAGE_VOICES.items() if v.split("-")[0] == code), None)
        if language is None:
            raise VoiceError(
                f"espeak voice {head!r} speaks a language Duplex does not list: {', '.join(self.languages)}"
            )
        return self.create_voice(language, variant, head, id=voice_id)

    def load_voice(self, spec: VoiceSpec) -> EspeakVoice:
        """espeak cannot clone: a registry voice becomes the plain espeak voice for its language."""
        if not self._warned_cloning:
            self._warned_cloning = True
            log.warning(
                "espeak: voice cloning is not available with this engine; voice %r (and any other registry "
                "voice) speaks with the espeak %s voice",
                spec.id,
                spec.language,
            )
        return self.create_voice(spec.language, id=spec.id)

    def voice_name(self, voice: EspeakVoice, language: str) -> str:
        """The espeak-ng voice name for ``voice`` speaking ``language`` (a resolved name or 'auto')."""
        lang = voice.language if language == "auto" else language
        base = voice.dialect if (voice.dialect and lang == voice.language) else LANGUAGE_VOICES[lang]
        return f"{base}+{voice.variant}" if voice.variant else base

    # --- synthesis ---------------------------------------------------------------------------------
    def stream(
        self,
        text: str,
        voice: EspeakVoice | None = None,
        language: str = "English",
        cancel: threading.Event | None = None,
        **generation: Any,
    ) -> Iterator[np.ndarray]:
        """Float32 mono chunks at 22050 Hz (the callback's 60 ms buffers), sentence by sentence.

        ``generation``: ``rate`` (words per minute, 80-450) and ``pitch`` (0-100); anything else is an error.
        Validation errors are raised at the call, before any audio. ``voice=None`` is the default voice.
        """
        return _audio_only(self.stream_timed(text, voice, language, cancel, **generation))

    def stream_timed(
        self,
        text: str,
        voice: EspeakVoice | None = None,
        language: str = "English",
        cancel: threading.Event | None = None,
        **generation: Any,
    ) -> Iterator[tuple[np.ndarray, list[tuple[str, float]]]]:
        """``stream``, each chunk with the words that start in it: ``(word, seconds from the first sample)``.

        Words are the whitespace-separated words of each sentence; their starts are espeak's own word events (where
        the word's first phoneme begins in the audio), so a player knows exactly which words it has played."""
        text = validate_text(text, self.max_text_chars)
        lang = resolve_language(language, self.languages)
        if voice is None:
            voice = self.default_voice()
        if not isinstance(voice, EspeakVoice):
            raise VoiceError(f"voice must be an EspeakVoice (create_voice/load_voice), got {type(voice).__name__}")
        if voice.language not in LANGUAGE_VOICES:
            raise UnsupportedLanguageError(
                f"voice language {voice.language!r} is not one of: {', '.join(self.languages)}"
            )
        unknown = set(generation) - {"rate", "pitch"}
        if unknown:
            raise InvalidOptionError(
                f"espeak does not know the option(s) {', '.join(sorted(unknown))}; "
                "valid options: rate (words per minute), pitch (0-100)"
            )
        rate = _check_int("rate", generation.get("rate", self.rate), MIN_RATE, MAX_RATE)
        pitch = _check_int("pitch", generation.get("pitch", self.pitch), 0, 100)
        return self._stream(split_sentences(text), self.voice_name(voice, lang), rate, pitch, cancel)

    def _stream(
        self, sentences: list[str], voice_name: str, rate: int, pitch: int, cancel: threading.Event | None
    ) -> Iterator[tuple[np.ndarray, list[tuple[str, float]]]]:
        stats = StreamStats()
        self.last_stats = stats
        t0 = time.perf_counter()

        def cancelled() -> bool:
            if cancel is not None and cancel.is_set():
                stats.cancelled = True
                return True
            return False

        try:
            for i, sentence in enumerate(sentences):
                if cancelled():
                    return
                # a pause after every sentence but the last, as espeak makes inside one text
                job = _synth_sentence(sentence, voice_name, rate, pitch, i < len(sentences) - 1, cancel)
                stats.sentences += 1
                stats.synth_ms.append(job.synth_ms)
                stats.lock_wait_ms += job.wait_ms
                stats.aborted_mid_sentence = job.aborted
                words = _word_starts(sentence, job.word_events)  # samples from the sentence's first sample
                start, end = stats.samples, stats.samples
                for k, buffer in enumerate(job.buffers):
                    if cancelled():
                        return
                    end += len(buffer)
                    last = k == len(job.buffers) - 1 and not job.aborted
                    starting = [(w, (start + at) / ESPEAK_SAMPLE_RATE) for w, at in words if last or at < end - start]
                    words = words[len(starting) :]
                    stats.chunks += 1
                    stats.samples += len(buffer)
                    if stats.first_chunk_s is None:
                        stats.first_chunk_s = time.perf_counter() - t0
                    yield buffer, starting
                if job.aborted:
                    stats.cancelled = True
                    return
        finally:
            stats.total_s = time.perf_counter() - t0

    def synthesize(
        self, text: str, voice: EspeakVoice | None = None, language: str = "English", **generation: Any
    ) -> np.ndarray:
        """The whole waveform (float32, 22050 Hz), built on ``stream``."""
        return collect(self.stream(text, voice, language, **generation))


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidOptionError(f"{name} must be a number from {low} to {high}, got {value!r}")
    if not (low <= value <= high):
        raise InvalidOptionError(f"{name} must be from {low} to {high}, got {value!r}")
    return int(round(value))
