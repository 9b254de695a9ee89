"""``VoiceLoader``: engine voice objects for registry voices, built once and remembered.

Turning a registry voice into what an engine speaks with (Qwen3-TTS: a voice-clone prompt from the reference clip)
costs a model pass; the loader keeps the results (LRU) per engine, voice and reference-file version, so a new session
or a voice switch mid-session does not redo it. One loader per process (the server's), shared by ``/api/v1/speak``,
voice sessions and their runtime voice switches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from processors.threads import run_in_thread
from processors.tts_engine import TTSEngine, VoiceError

from .registry import Voice, VoiceNotFoundError, VoiceRegistry


class VoiceLoader:
    """Thread-safe; ``get`` blocks (call it off the event loop), ``load`` is its awaitable form."""

    def __init__(self, max_items: int = 32):
        self.max_items = max_items
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(engine: TTSEngine, voice: Voice) -> tuple:
        try:
            st = voice.reference_path.stat()
            version = (st.st_mtime_ns, st.st_size)
        except OSError:
            version = None
        return (id(engine), voice.id, str(voice.folder), version, voice.manifest.model_dump_json())

    def cached(self, engine: TTSEngine, voice: Voice) -> Any | None:
        with self._lock:
            return self._cache.get(self._key(engine, voice))

    def get(self, engine: TTSEngine, voice: Voice) -> Any:
        key = self._key(engine, voice)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        obj = engine.load_voice(voice.spec())
        with self._lock:
            self._cache[key] = obj
            while len(self._cache) > self.max_items:
                self._cache.popitem(last=False)
        return obj

    async def load(self, engine: TTSEngine, voice: Voice) -> Any:
        key = self._key(engine, voice)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return await run_in_thread(self.get, engine, voice, name=f"duplex-voice-{voice.id}")

    def forget(self, voice_id: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[1] == voice_id]:
                del self._cache[key]

    def resolver(self, registry: VoiceRegistry, engine: TTSEngine) -> Callable[[str], Any]:
        """``voice id -> engine voice object`` for a TTS service's runtime voice switches: registry voices through
        this cache; ids the engine understands itself (espeak's ``en-gb+f3``) when the registry has no such voice.
        Raises ``VoiceError`` for anything else."""

        def resolve(voice_id: str) -> Any:
            try:
                voice = registry.get(voice_id)
            except VoiceNotFoundError:
                own = getattr(engine, "voice_from_id", None)
                if own is None:
                    raise VoiceError(f"unknown voice {voice_id!r}") from None
                return own(voice_id)
            return self.get(engine, voice)

        return resolve
