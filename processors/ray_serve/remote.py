"""Engines whose work runs on Ray Serve replicas: ``RemoteTTSEngine`` and ``RemoteSTTEngine`` offer the engine
interfaces of ``processors.tts_engine`` and ``processors.stt_engine`` over deployment handles, so the pipecat
adapters, ``/api/v1/speak``, ``/v1/audio/speech`` and voice sessions run on them unchanged.

Streaming: ``stream`` calls the replica's async generator through a streaming handle and yields each chunk as it
arrives (the replica generates ahead; nothing waits for playback). Text and language are checked here first, so bad
input fails at the call as with a local engine.

Cancel path: the engine's caller sets its cancel event while this thread is blocked waiting for the next chunk, so
the event is watched (``processors.threads.watch``, within ``WATCH_POLL_S``) and the watcher cancels the streaming
call; Ray cancels the replica's generator task, which sets the engine's own cancel event (``replica.py``). Measured
on one machine: cancel event set -> engine stopped on the replica within one Qwen3-TTS frame (``tests`` and
``duplex bench scale``). The same watch carries a deadline: a replica that sends nothing for ``request_timeout_s``
is treated as gone.

Failure: a replica that dies (or is unreachable, or refuses work) before the first chunk is retried on another
(``retries``); once audio has been handed out the stream cannot be resumed elsewhere without repeating words, so it
ends with ``EngineUnavailableError`` (the voice session says it could not finish; the next utterance goes to a live
replica: Serve's router drops the dead one at once). Transcription has no partial result, so it is always retried.
Errors of the request itself (bad text, unknown voice) come back as the engine raised them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processors.audio import STT_SAMPLE_RATE
from processors.stt_engine import STTError, STTUnavailableError, Transcript, validate_audio
from processors.threads import watch
from processors.tts_engine import (
    MAX_TEXT_CHARS,
    EngineUnavailableError,
    TTSError,
    VoiceError,
    VoiceSpec,
    collect,
    resolve_language,
    validate_text,
)

from .protocol import Chunk, EngineInfo, RemoteVoice, StreamRequest, StreamStarted

log = logging.getLogger("duplex.ray_serve")


def _gone(error: BaseException) -> bool:
    """True for errors that say the replica (or its node, or the deployment) could not do the work, not the request."""
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    infra = (
        rex.RayActorError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.ObjectLostError,
        rex.RaySystemError,
        rex.TaskCancelledError,  # cancelled by Ray (a replica shutting down), not by us: we check our event first
        sex.BackPressureError,
        sex.DeploymentUnavailableError,
        sex.ReplicaUnavailableError,
    )
    if isinstance(error, rex.RayTaskError):
        return isinstance(getattr(error, "cause", None), infra)
    return isinstance(error, infra)


def _request_error(error: BaseException, base: type[Exception]) -> Exception:
    """The engine's own exception for an error the replica raised (its message, not Ray's traceback)."""
    from ray import exceptions as rex

    cause = getattr(error, "cause", None) if isinstance(error, rex.RayTaskError) else error
    if isinstance(cause, (base, ValueError)):
        return cause
    return base(f"{type(cause).__name__}: {cause}")


@dataclass
class RemoteStreamStats:
    """What one remote stream did (``RemoteTTSEngine.last_stats``). ``hops_s``: replica yield -> arrival here per
    chunk (one machine only: it compares the two processes' ``perf_counter``)."""

    stream_id: str
    replica: str | None = None
    pid: int | None = None
    started: float = 0.0  # when ``stream`` started (this process's ``perf_counter``)
    received: float | None = None  # when the request reached the replica (its clock: one machine only)
    first_produced: float | None = None  # when the replica had the first chunk (likewise)
    attempts: int = 0
    chunks: int = 0
    first_chunk_s: float | None = None
    hops_s: list[float] = field(default_factory=list)
    cancelled: bool = False  # ended by the caller's cancel event
    complete: bool = False  # the replica's stream ended by itself


class RemoteTTSEngine:
    """A catalogue TTS engine on Ray Serve replicas (see module docstring). Thread-safe: each ``stream`` is its own
    handle call."""

    def __init__(
        self,
        handle: Any,
        info: EngineInfo,
        *,
        request_timeout_s: float = 30.0,
        retries: int = 2,
        max_text_chars: int = MAX_TEXT_CHARS,
    ):
        self._handle = handle
        self._streaming = handle.options(stream=True)
        self.info = info
        self.name = info.name
        self.sample_rate = info.sample_rate
        self._languages = tuple(info.languages)
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.max_text_chars = max_text_chars
        self.last_stats = RemoteStreamStats("")
        self._lock = threading.Lock()
        self._in_flight: dict[str, RemoteStreamStats] = {}
        self._by_id: dict[str, RemoteVoice] = {}
        self._lease: Any = None  # an object this process owns: replicas stop streams whose caller died
        if info.voice_ids:
            self.voice_from_id = self._voice_from_id  # only where the engine has it: the voice loader looks for it

    @property
    def languages(self) -> tuple[str, ...]:
        return self._languages

    def streams_in_flight(self) -> list[RemoteStreamStats]:
        """Streams now being served, with their replica (diagnostics; tests pick a replica to stop)."""
        with self._lock:
            return list(self._in_flight.values())

    # --- voices ----------------------------------------------------------------------------------------------------
    def load_voice(self, spec: VoiceSpec) -> RemoteVoice:
        """The voice by content, its clip put in the object store, and built on every live replica now (so a bad
        reference fails here, as with a local engine; replicas started later build it on first use)."""
        import ray

        data = spec.reference_audio.read_bytes() if spec.reference_audio is not None else None
        digest = hashlib.sha256(data or b"")
        fields = [self.name, spec.id, spec.name, spec.language, spec.transcript, spec.x_vector_only]
        digest.update(json.dumps(fields).encode())
        voice = RemoteVoice(
            key=digest.hexdigest()[:32],
            id=spec.id,
            name=spec.name,
            language=spec.language,
            transcript=spec.transcript,
            x_vector_only=spec.x_vector_only,
            reference=ray.put(data) if data is not None else None,
        )
        self._prepare(voice)
        return voice

    def _voice_from_id(self, voice_id: str) -> RemoteVoice:
        """A voice id the engine resolves itself (espeak's ``en-gb+f3``), checked on the replicas once."""
        voice = self._by_id.get(voice_id)
        if voice is None:
            if not isinstance(voice_id, str) or not voice_id.strip():
                raise VoiceError(f"invalid voice id {voice_id!r}")
            voice = RemoteVoice(key=f"id:{voice_id}", id=voice_id, engine_id=True)
            self._prepare(voice)
            self._by_id[voice_id] = voice
        return voice

    def _prepare(self, voice: RemoteVoice) -> None:
        try:
            results = self._handle.broadcast("prepare_voice", voice).results(
                timeout_s=self.request_timeout_s, return_exceptions=True
            )
        except TimeoutError:
            results = []
        ready = 0
        for result in results:
            if not isinstance(result, BaseException):
                ready += 1
            elif not _gone(result):
                raise _request_error(result, TTSError)
        if ready:
            return
        # no live replica known to this handle yet (or none answered): one replica, through the router's queue
        try:
            self._handle.prepare_voice.remote(voice).result(timeout_s=self.request_timeout_s)
        except TimeoutError:
            raise EngineUnavailableError(
                f"no {self.name} TTS replica answered within {self.request_timeout_s:g} s"
            ) from None
        except Exception as e:
            if _gone(e):
                raise EngineUnavailableError(f"no {self.name} TTS replica could prepare the voice: {e}") from None
            raise _request_error(e, TTSError) from None

    # --- synthesis -------------------------------------------------------------------------------------------------
    def stream(
        self,
        text: str,
        voice: RemoteVoice | None,
        language: str = "English",
        cancel: threading.Event | None = None,
        **generation: Any,
    ) -> Iterator[np.ndarray]:
        """Float32 mono chunks at ``sample_rate`` as the replica yields them; stops within ``WATCH_POLL_S`` plus one
        engine step of ``cancel`` being set."""
        text = validate_text(text, self.max_text_chars)
        lang = resolve_language(language, self.languages)
        if voice is not None and not isinstance(voice, RemoteVoice):
            raise VoiceError(f"voice must come from load_voice/voice_from_id, got {type(voice).__name__}")
        if self._lease is None:
            import ray

            self._lease = ray.put(b"")
        request = StreamRequest(text, voice, lang, dict(generation), uuid.uuid4().hex, self._lease)
        return self._stream(request, cancel)

    def _stream(self, request: StreamRequest, cancel: threading.Event | None) -> Iterator[np.ndarray]:
        t0 = time.perf_counter()
        stats = RemoteStreamStats(request.stream_id, started=t0)
        self.last_stats = stats
        try:
            while True:
                stats.attempts += 1
                gen = self._streaming.stream.remote(request)
                watched = watch(cancel, lambda reason, gen=gen: gen.cancel(), timeout_s=self.request_timeout_s)
                delivered = False
                try:
                    for item in gen:
                        watched.extend(self.request_timeout_s)
                        if isinstance(item, StreamStarted):
                            stats.replica, stats.pid, stats.received = item.replica, item.pid, item.received
                            with self._lock:
                                self._in_flight[request.stream_id] = stats
                            continue
                        if (cancel is not None and cancel.is_set()) or watched.fired is not None:
                            break
                        assert isinstance(item, Chunk)
                        now = time.perf_counter()
                        stats.hops_s.append(now - item.produced)
                        stats.chunks += 1
                        if stats.first_chunk_s is None:
                            stats.first_chunk_s, stats.first_produced = now - t0, item.produced
                        delivered = True
                        yield item.samples
                    else:
                        stats.complete = True
                        return
                except Exception as e:  # (closing this generator early raises GeneratorExit: not caught here)
                    if cancel is not None and cancel.is_set():
                        return  # the cancellation we asked for
                    if watched.fired == "timeout":
                        error: Exception = EngineUnavailableError(
                            f"the {self.name} TTS replica sent nothing for {self.request_timeout_s:g} s"
                        )
                    elif _gone(e):
                        where = " serving this utterance" if delivered else ""
                        error = EngineUnavailableError(
                            f"the {self.name} TTS replica{where} stopped ({type(e).__name__})"
                        )
                    else:
                        raise _request_error(e, TTSError) from None
                    if delivered or stats.attempts > self.retries:
                        raise error from None
                    log.warning("%s; trying another replica (%d/%d)", error, stats.attempts, self.retries)
                    continue
                finally:
                    watched.stop()
                    if not stats.complete:
                        gen.cancel()  # we stopped early (cancel, error, the caller closed us): stop the replica
                if watched.fired == "timeout":
                    raise EngineUnavailableError(
                        f"the {self.name} TTS replica sent nothing for {self.request_timeout_s:g} s"
                    )
                return  # cancelled
        finally:
            stats.cancelled = cancel is not None and cancel.is_set() and not stats.complete
            with self._lock:
                self._in_flight.pop(request.stream_id, None)

    def synthesize(self, text: str, voice: RemoteVoice | None, language: str = "English", **generation: Any):
        return collect(self.stream(text, voice, language, **generation))


class RemoteSTTEngine:
    """A catalogue STT engine on Ray Serve replicas. ``session()`` gives a session its own engine on the replicas for
    engines the catalogue makes per session (pocketsphinx); Serve routes the session's calls to the replica that
    has it."""

    def __init__(
        self,
        handle: Any,
        info: EngineInfo,
        *,
        request_timeout_s: float = 30.0,
        retries: int = 2,
        session_id: str | None = None,
    ):
        self._handle = handle if session_id is None else handle.options(multiplexed_model_id=session_id)
        self._base_handle = handle
        self.info = info
        self.name = info.name
        self.language = info.language
        self.holds_gil = info.holds_gil  # the replica's: interim passes would stall it as they would stall us
        if info.ttfs_p99_s is not None:
            self.ttfs_p99_s = info.ttfs_p99_s
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.session_id = session_id

    def session(self) -> RemoteSTTEngine:
        return RemoteSTTEngine(
            self._base_handle,
            self.info,
            request_timeout_s=self.request_timeout_s,
            retries=self.retries,
            session_id=uuid.uuid4().hex,
        )

    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        audio = validate_audio(audio, sample_rate)  # bad input fails here, before it travels
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            response = self._handle.transcribe.remote(audio, sample_rate)
            try:
                return response.result(timeout_s=self.request_timeout_s)
            except TimeoutError:
                response.cancel()
                error = STTUnavailableError(f"no {self.name} STT replica answered within {self.request_timeout_s:g} s")
            except Exception as e:
                if not _gone(e):
                    raise _request_error(e, STTError) from None
                error = STTUnavailableError(f"the {self.name} STT replica stopped ({type(e).__name__})")
            if attempt < self.retries:
                log.warning("%s; trying another replica (%d/%d)", error, attempt + 1, self.retries)
        assert error is not None
        raise error
