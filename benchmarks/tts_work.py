"""The work every Qwen3-TTS benchmark measures, so that their tables compare the same thing."""

from __future__ import annotations

TEXT = (
    "Streaming speech should start while the model is still thinking, and it should stop the moment the "
    "listener interrupts, which is the whole point of a full duplex voice agent."
)
GREEDY = dict(do_sample=False, subtalker_dosample=False)
REF_TEXT = "This is the reference recording that the voice is cloned from."
