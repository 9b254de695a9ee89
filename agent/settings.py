"""All agent settings in one typed place, read from ``DUPLEX_*`` environment variables and CLI flags.

The groups are defined beside the code that reads them and composed here: ``tts`` / ``stt`` / ``llm`` come from the
engine catalogue (``processors.catalogue``: each engine's options model, e.g. ``processors.qwen3_tts.options``),
``vad`` / ``turn`` from ``pipelines.policy``, ``ray`` (where the engines run: ``duplex serve --ray``) from
``processors.ray_serve.options``, ``server`` below. Nested groups use ``__`` in env names:
``DUPLEX_TTS__ENGINE=espeak``, ``DUPLEX_TURN__STOP_SECS=0.6``. CLI flags map onto the same fields (``agent/serve.py``);
flags win over env vars, which win over defaults. A ``DUPLEX_*`` variable that names no setting is reported by
``unknown_env_vars`` (``duplex serve`` warns about each) and otherwise ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipelines.options import AgentOptions
from pipelines.policy import TurnOptions, VADOptions
from processors.catalogue import LLMOptions, STTOptions, TTSOptions
from processors.ray_serve.options import RayOptions
from processors.tts_engine import MAX_TEXT_CHARS
from voices.registry import VoiceRegistry

ENV_PREFIX = "DUPLEX_"
ENV_NESTED = "__"
OTHER_ENV_VARS = ("DUPLEX_CACHE_DIR",)  # read by the code that uses them (the local LLM's cache), not settings

# The groups under the names the settings file has always used.
TTSSettings = TTSOptions
STTSettings = STTOptions
LLMSettings = LLMOptions
VADSettings = VADOptions
TurnSettings = TurnOptions
RaySettings = RayOptions


class IceServer(BaseModel):
    """A STUN or TURN server for WebRTC, used by the page and by the server's own peer (``--ice-server``).

    As text (the flag, or an item of ``DUPLEX_SERVER__ICE_SERVERS``): ``stun:host[:port]``, or
    ``turn:USER:CREDENTIAL@host[:port][?transport=udp|tcp]`` (also ``turns:``); the credential is everything after
    the last ``:`` before the last ``@``, so TURN REST usernames like ``1700000000:alice`` work; percent-encode a
    ``@`` or ``:`` inside the credential. As JSON: ``{"urls": ..., "username": ..., "credential": ...}``.
    """

    model_config = ConfigDict(extra="forbid")

    urls: str
    username: str | None = None
    credential: str | None = None

    @field_validator("urls")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(ICE_SCHEMES) or len(v.split(":", 1)[1]) < 1:
            raise ValueError(f"an ICE server URL starts with stun:, turn: or turns:, got {v!r}")
        return v

    @classmethod
    def parse(cls, text: str) -> IceServer:
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        if not sep or not text.startswith(ICE_SCHEMES):
            raise ValueError(f"an ICE server starts with stun:, turn: or turns:, got {text!r}")
        rest = rest.removeprefix("//")
        username = credential = None
        if "@" in rest:
            userinfo, rest = rest.rsplit("@", 1)
            user, colon, secret = userinfo.rpartition(":")
            if not colon or not user:
                raise ValueError(f"write the TURN credentials as {scheme}:USER:CREDENTIAL@host:port, got {text!r}")
            username, credential = unquote(user), unquote(secret)
        return cls(urls=f"{scheme}:{rest}", username=username, credential=credential)

    def browser(self) -> dict[str, Any]:
        """The ``RTCIceServer`` dictionary for the page."""
        return self.model_dump(exclude_none=True)


ICE_SCHEMES = ("stun:", "turn:", "turns:")


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    auth_token: str | None = None
    max_sessions: int = Field(10, ge=1)
    max_text_chars: int = Field(MAX_TEXT_CHARS, ge=1)
    max_message_bytes: int = Field(1 << 20, ge=1024)
    max_upload_bytes: int = Field(20 << 20, ge=1024)
    idle_timeout_s: float = Field(300.0, gt=0.0)
    ice_servers: list[IceServer] = []  # STUN/TURN for WebRTC beyond the LAN (the page and the server's peer)

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _ice_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        return [IceServer.parse(x) if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    cors_origins: list[str] = []  # web origins allowed to call the API from a page served elsewhere (a client app)


class Settings(BaseSettings, AgentOptions):
    """``AgentOptions`` (device, engines, turn policy) plus where user voices live and the server's settings."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, extra="ignore")

    voices_dir: Path | None = None  # user voices; None = ~/.local/share/duplex/voices
    server: ServerSettings = ServerSettings()

    def user_voices_dir(self) -> Path:
        return self.voices_dir or Path.home() / ".local" / "share" / "duplex" / "voices"

    def voice_registry(self) -> VoiceRegistry:
        """The shipped voices and the user's, with ``tts.voice`` as the default and the upload size limit."""
        return VoiceRegistry(
            self.user_voices_dir(), default_voice=self.tts.voice, max_bytes=self.server.max_upload_bytes
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _KnownFieldsOnly(settings_cls, env_settings), dotenv_settings, file_secret_settings)


class _KnownFieldsOnly(PydanticBaseSettingsSource):
    """The env source without keys that name no field: the groups refuse unknown keys (a typo in code or in a
    scenario is an error), but a stray ``DUPLEX_TTS__ENGIN`` in the environment is reported, not fatal."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return _known(self._source(), self.settings_cls)


def _known(values: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            value = _known(value, sub)
        out[key] = value
    return out


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[str]:
    """``DUPLEX_*`` variables that name no setting (misspellings), e.g. ``DUPLEX_TTS__ENGIN``."""
    environ = os.environ if environ is None else environ
    unknown = []
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in OTHER_ENV_VARS:
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        model: type[BaseModel] | None = Settings
        for part in path:
            field = model.model_fields.get(part) if model is not None else None
            if field is None:
                unknown.append(name)
                break
            sub = field.annotation
            model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return sorted(unknown)
