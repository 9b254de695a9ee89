"""What travels between an agent process and an engine replica (pickled by Ray): plain dataclasses, no Ray.

Voices travel by content: ``RemoteVoice.key`` is a digest of the reference clip and the voice's settings, and each
replica keeps the engine voices it built under that key (LRU). The clip itself travels once per agent process and
voice, through Ray's object store (``reference`` is an ``ObjectRef`` the agent process owns); a replica reads it
only when it does not have the voice yet. So a voice uploaded to any agent process is usable on every replica, new
and restarted ones included, with no shared file system; a replica builds the prompt on first use (the agent warms
every live replica when it loads the voice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EngineInfo:
    """What a replica's engine is: the attributes the engine interface promises, for the remote engine to mirror."""

    kind: str
    name: str
    replica: str
    pid: int
    options_digest: str  # of the options the replica loaded with: agents compare it with their own
    sample_rate: int = 0  # TTS
    languages: tuple[str, ...] = ()  # TTS
    voice_ids: bool = False  # TTS: the engine resolves voice ids of its own (espeak's "en-gb+f3")
    language: str | None = None  # STT: what it recognises
    holds_gil: bool = False  # STT: see processors.stt_engine
    ttfs_p99_s: float | None = None  # STT: see processors.stt_engine
    per_session: bool = False  # STT: a session gets its own engine on the replica (pocketsphinx)


@dataclass(frozen=True)
class RemoteVoice:
    """A voice as replicas build it (see module docstring). ``engine_id``: ``id`` is one the engine resolves itself,
    with no reference clip."""

    key: str
    id: str
    name: str = ""
    language: str = "English"
    transcript: str | None = None
    x_vector_only: bool = False
    reference: Any = field(default=None, compare=False)  # ObjectRef of the clip's bytes
    engine_id: bool = False


@dataclass(frozen=True)
class StreamRequest:
    """One utterance. ``caller``: an ``ObjectRef`` the calling process owns; the replica reads it now and then, and
    once it cannot (the caller's process died without cancelling), it stops the stream instead of generating the
    rest of the utterance for nobody."""

    text: str
    voice: RemoteVoice | None
    language: str
    generation: dict[str, Any]
    stream_id: str
    caller: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class StreamStarted:
    """The first item of every stream: which replica serves it and when the request reached it (the replica's
    ``perf_counter``; logs, tests, the benchmark)."""

    stream_id: str
    replica: str
    pid: int
    received: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """Audio as the engine yielded it. ``produced``: the replica's ``time.perf_counter()`` when it got the chunk; on
    one machine that clock is the agent's too, so the benchmark reads the hop's latency from it."""

    samples: np.ndarray
    produced: float
