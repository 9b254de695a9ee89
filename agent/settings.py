"""All agent settings in one typed place, read from ``DUPLEX_*`` environment variables and CLI flags.

Nested groups use ``__`` in env names: ``DUPLEX_TTS__ENGINE=espeak``, ``DUPLEX_TURN__STOP_SECS=0.6``.
CLI flags map onto the same fields (see ``agent/cli.py``); flags win over env vars, which win over defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_QWEN3_TTS_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"
DEFAULT_PARAKEET_MODEL = "nvidia/parakeet-tdt-0.6b-v2"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Your answers are spoken aloud, so reply in one to three short, "
    "plain sentences. Never use markdown, lists, emojis or code. If you did not understand, ask briefly."
)


class TTSSettings(BaseModel):
    engine: Literal["qwen3", "espeak", "auto"] = "auto"
    model: str = DEFAULT_QWEN3_TTS_MODEL  # hub id or local directory
    voice: str | None = None  # voice id from the registry; None = the registry's default
    language: str = "English"
    first_chunk_frames: int = Field(1, ge=1, le=16)  # codec frames before the first audio chunk
    chunk_frames: int = Field(4, ge=1, le=64)  # codec frames per later chunk
    temperature: float = 0.9
    top_k: int = 50


class STTSettings(BaseModel):
    engine: Literal["parakeet", "pocketsphinx", "auto"] = "auto"
    model: str = DEFAULT_PARAKEET_MODEL  # hub id or local .nemo
    interim_interval_s: float | None = 1.0  # re-transcribe the growing utterance this often; None = off


class LLMSettings(BaseModel):
    backend: str = "local"  # "local" (bundled SmolLM2) or an OpenAI-compatible base URL
    model: str = ""  # model name at the endpoint; ignored for local
    api_key: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = Field(120, ge=1, le=4096)
    temperature: float = 0.7


class VADSettings(BaseModel):
    confidence: float = 0.7
    start_secs: float = 0.2
    stop_secs: float = 0.2
    min_volume: float = 0.6


class TurnSettings(BaseModel):
    """Turn-taking and interruption policy (documented in pipelines/policy.py)."""

    stop_strategy: Literal["speech_timeout", "smart_turn"] = "speech_timeout"
    stop_secs: float = Field(0.6, ge=0.0)  # speech_timeout: silence after VAD stop that ends the user's turn
    smart_turn_stop_secs: float = Field(3.0, gt=0.0)  # smart_turn: silence that ends the turn on an INCOMPLETE verdict
    user_turn_stop_timeout_s: float = Field(5.0, gt=0.0)  # a turn with no stop signal at all ends after this
    barge_in: bool = True  # False: the user cannot interrupt the bot (speech while it talks still forms a turn)
    false_interruption_timeout_s: float | None = Field(1.5, gt=0.0)  # resume after a barge-in with no words; None = off
    echo_guard: Literal["auto", "on", "off"] = "auto"  # auto: on for telephony, off for headset clients
    echo_guard_window_s: float = Field(1.5, ge=0.0)  # the bot's first moments of speech that the guard protects
    echo_guard_min_speech_s: float = Field(0.5, ge=0.0)  # sustained speech needed to interrupt inside the window
    echo_guard_min_words: int = Field(2, ge=1)  # ... or this many words in an interim transcript


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    auth_token: str | None = None
    max_sessions: int = Field(10, ge=1)
    max_text_chars: int = 2_000
    max_message_bytes: int = 1 << 20
    max_upload_bytes: int = 20 << 20
    idle_timeout_s: float = 300.0
    cors_origins: list[str] = []  # web origins allowed to call the API from a page served elsewhere (a client app)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUPLEX_", env_nested_delimiter="__", extra="ignore")

    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = pick (CUDA when present)
    voices_dir: Path | None = None  # user voices; None = ~/.local/share/duplex/voices
    tts: TTSSettings = TTSSettings()
    stt: STTSettings = STTSettings()
    llm: LLMSettings = LLMSettings()
    vad: VADSettings = VADSettings()
    turn: TurnSettings = TurnSettings()
    server: ServerSettings = ServerSettings()

    def user_voices_dir(self) -> Path:
        return self.voices_dir or Path.home() / ".local" / "share" / "duplex" / "voices"
