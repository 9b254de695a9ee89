"""``AgentOptions``: everything a voice agent is built from — the device, each engine group (from the engine
catalogue), where the engines run (in this process, or on Ray Serve: ``ray``) and the turn policy.
``agent.settings.Settings`` is this plus the server's and the voices' settings, read from flags and ``DUPLEX_*``
variables; code on this floor and below takes ``AgentOptions``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from processors.catalogue import LLMOptions, STTOptions, TTSOptions
from processors.ray_serve.options import RayOptions

from .policy import TurnOptions, VADOptions


class AgentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = pick (CUDA when present)
    tts: TTSOptions = TTSOptions()  # type: ignore[valid-type]
    stt: STTOptions = STTOptions()  # type: ignore[valid-type]
    llm: LLMOptions = LLMOptions()
    vad: VADOptions = VADOptions()
    turn: TurnOptions = TurnOptions()
    ray: RayOptions = RayOptions()
