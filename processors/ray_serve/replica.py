"""``EngineReplica``: one Ray Serve replica holding one engine from the catalogue, loaded with the catalogue's own
``load(options, device)`` on the node Ray placed it on.

Methods (called through deployment handles by ``processors.ray_serve.remote``):

* ``stream(request)``: an async generator; ``StreamStarted`` first, then a ``Chunk`` per engine chunk, as the engine
  yields them. The engine runs in a worker thread (``processors.threads.ThreadedStream``) and generates ahead of the
  caller: playback pace never holds the engine. When the caller cancels the call (the remote engine does so within
  ``WATCH_POLL_S`` of its cancel event), Ray cancels this generator's task; leaving the ``async with`` sets the
  engine's cancel event, so the engine stops within one step, and the worker is joined. A caller that dies cannot
  cancel, and Ray lets the generator run on; so the stream also stops once its caller's lease object cannot be read
  (``caller_gone``, within a few seconds).
* ``prepare_voice(voice)``: builds a voice into this replica's cache (errors as the engine raises them).
* ``transcribe(audio, sample_rate)``: one utterance; with a multiplexed model id (the session's id) on an engine the
  catalogue makes per session, that session's own engine on this replica (LRU, ``SESSIONS_PER_REPLICA``), and Serve
  routes the session's later utterances to the replica that has it.
* ``info()``, ``stats()``: what the engine is; what this replica did (tests, the benchmark, diagnostics).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from ray import serve

from processors import catalogue
from processors.threads import ThreadedStream, run_in_thread
from processors.tts_engine import VoiceError, VoiceSpec

from .protocol import Chunk, EngineInfo, RemoteVoice, StreamRequest, StreamStarted

SESSIONS_PER_REPLICA = 64  # per-session engines (pocketsphinx decoders) a replica keeps; older ones are dropped
CALLER_CHECK_S = 1.0  # how often a stream checks that its caller's process is alive
CALLER_TIMEOUT_S = 2.0  # a check unanswered this long is a miss
CALLER_MISSES = 2  # misses in a row: the caller is gone


async def caller_gone(lease: Any) -> None:
    """Returns once the process that owns ``lease`` is gone (its object cannot be read any more)."""
    misses = 0
    while misses < CALLER_MISSES:
        await asyncio.sleep(CALLER_CHECK_S)
        try:
            await asyncio.wait_for(asyncio.wrap_future(lease.future()), CALLER_TIMEOUT_S)
            misses = 0
        except TimeoutError:
            misses += 1
        except Exception:  # OwnerDiedError, ObjectLostError: the owner is gone
            return


def options_digest(kind: str, engine: str, options: dict[str, Any], device: str | None) -> str:
    text = json.dumps({"kind": kind, "engine": engine, "options": options, "device": device}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _replica_name() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Serve (a plain actor, a test)
        return f"pid{os.getpid()}"


class _Voices:
    """Engine voices by ``RemoteVoice.key`` (LRU, in memory); one build per key at a time. The reference clip is on
    disk only while the engine reads it (engines take a path)."""

    def __init__(self, engine: Any, size: int):
        self.engine = engine
        self.size = size
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._building: dict[str, asyncio.Lock] = {}

    def keys(self) -> list[str]:
        return list(self._cache)

    async def get(self, voice: RemoteVoice | None) -> Any:
        if voice is None:
            return None
        if voice.key in self._cache:
            self._cache.move_to_end(voice.key)
            return self._cache[voice.key]
        lock = self._building.setdefault(voice.key, asyncio.Lock())
        async with lock:
            if voice.key not in self._cache:
                self._cache[voice.key] = await self._build(voice)
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        self._building.pop(voice.key, None)
        return self._cache[voice.key]

    async def _build(self, voice: RemoteVoice) -> Any:
        if voice.engine_id:
            own = getattr(self.engine, "voice_from_id", None)
            if own is None:
                raise VoiceError(f"unknown voice {voice.id!r}")
            return await run_in_thread(own, voice.id, name="duplex-replica-voice")
        data = await voice.reference if voice.reference is not None else None  # from the object store, once
        with tempfile.TemporaryDirectory(prefix="duplex-replica-voice-") as folder:
            reference = None
            if data is not None:
                reference = Path(folder) / "reference.wav"
                reference.write_bytes(data)
            spec = VoiceSpec(
                id=voice.id,
                name=voice.name,
                language=voice.language,
                reference_audio=reference,
                transcript=voice.transcript,
                x_vector_only=voice.x_vector_only,
            )
            return await run_in_thread(self.engine.load_voice, spec, name="duplex-replica-voice")


class EngineReplica:
    """The deployment's class (see module docstring); ``processors.ray_serve.cluster`` wraps it with
    ``serve.deployment``."""

    def __init__(
        self, kind: str, engine: str, options: dict[str, Any], device: str | None = None, voice_cache: int = 64
    ):
        self.kind = kind
        self.row = catalogue.entry(kind, engine)  # type: ignore[arg-type]
        group = catalogue.TTSOptions if kind == "tts" else catalogue.STTOptions
        self.options = group.model_validate(options)
        self.digest = options_digest(kind, engine, options, device)
        self.engine = self.row.load(self.options, device)
        self.replica = _replica_name()
        self.voices = _Voices(self.engine, voice_cache) if kind == "tts" else None
        self.finished: deque[tuple[str, float, str]] = deque(maxlen=512)  # (stream id, ended at, outcome)
        self.active = 0

    async def info(self) -> EngineInfo:
        e = self.engine
        if self.kind == "tts":
            return EngineInfo(
                kind="tts",
                name=e.name,
                replica=self.replica,
                pid=os.getpid(),
                options_digest=self.digest,
                sample_rate=int(e.sample_rate),
                languages=tuple(e.languages),
                voice_ids=callable(getattr(e, "voice_from_id", None)),
            )
        return EngineInfo(
            kind="stt",
            name=e.name,
            replica=self.replica,
            pid=os.getpid(),
            options_digest=self.digest,
            language=getattr(e, "language", None),
            holds_gil=bool(getattr(e, "holds_gil", False)),
            ttfs_p99_s=getattr(e, "ttfs_p99_s", None),
            per_session=self.row.per_session is not None,
        )

    async def stats(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "pid": os.getpid(),
            "active": self.active,
            "voices": self.voices.keys() if self.voices is not None else [],
            "finished": list(self.finished),
        }

    # --- TTS ---------------------------------------------------------------------------------------------------------
    async def prepare_voice(self, voice: RemoteVoice) -> str:
        assert self.voices is not None, "prepare_voice on an STT replica"
        await self.voices.get(voice)
        return self.replica

    async def stream(self, request: StreamRequest):
        assert self.voices is not None, "stream on an STT replica"
        received = time.perf_counter()
        voice = await self.voices.get(request.voice)
        engine = self.engine

        def produce(cancel):
            return engine.stream(request.text, voice, request.language, cancel, **request.generation)

        outcome = "cancelled"
        self.active += 1
        stream = ThreadedStream(produce, name=f"duplex-replica-{request.stream_id[:8]}")
        orphaned = None
        if request.caller is not None:
            orphaned = asyncio.ensure_future(caller_gone(request.caller))
            orphaned.add_done_callback(lambda f: f.cancelled() or stream.cancel())
        try:
            yield StreamStarted(request.stream_id, self.replica, os.getpid(), received)
            async with stream:
                async for samples in stream:
                    yield Chunk(samples, time.perf_counter())
            outcome = "orphaned" if orphaned is not None and orphaned.done() else "complete"
        except Exception:
            outcome = "error"
            raise
        finally:
            if orphaned is not None:
                orphaned.cancel()
            stream.cancel()  # also when this generator is only closed (not cancelled): the engine stops now
            if stream.thread is not None and stream.thread.is_alive():
                await run_in_thread(stream.thread.join, 10.0, name="duplex-replica-join")
            self.active -= 1
            self.finished.append((request.stream_id, time.perf_counter(), outcome))

    # --- STT ---------------------------------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=SESSIONS_PER_REPLICA)
    async def session_engine(self, session_id: str) -> Any:
        return await run_in_thread(self.row.session_engine, self.engine, name="duplex-replica-session")

    async def transcribe(self, audio: Any, sample_rate: int) -> Any:
        session = serve.get_multiplexed_model_id()
        engine = self.engine
        if session and self.row.per_session is not None:
            engine = await self.session_engine(session)
        return await run_in_thread(engine.transcribe, audio, sample_rate, name="duplex-replica-stt")
