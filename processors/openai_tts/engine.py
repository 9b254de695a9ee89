"""``OpenAISpeechEngine``: a TTS engine whose model runs behind an OpenAI-compatible ``/audio/speech`` endpoint.

It asks for ``response_format: "pcm"`` (16-bit mono at ``sample_rate``, 24 kHz for OpenAI, vLLM-Omni's Qwen3-TTS
and Duplex) and yields the samples as the response streams in. Voices are the endpoint's, addressed by id (a
registry voice's id is sent as it is: another Duplex server knows the same ids). Plain Python on httpx; thread-safe
(one pooled client, one request per stream).

Cancel: the reading thread waits in a socket read (for the headers, which a server may send only with its first
audio, or for the next chunk), so the cancel event is watched (``processors.threads.watch``) and the watcher shuts
the socket down, which ends the read at once and closes the request: the server sees the disconnect (Duplex stops
its engine within one step). Each stream has its own connection (no keep-alive), so the socket is known from the
moment it connects. ``timeout_s`` bounds connecting, the first audio and any gap between chunks.

Errors: the endpoint's 4xx answers become the engine's own errors with the endpoint's message (a 400 about a voice
-> ``VoiceError``, about the text -> ``InvalidTextError``); an unreachable endpoint, 429, 5xx, a deadline or a
stream that ends early -> ``EngineUnavailableError`` (a voice session then says it could not finish).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np

from processors.audio import pcm16_to_float
from processors.threads import watch
from processors.tts_engine import (
    MAX_TEXT_CHARS,
    EngineUnavailableError,
    InvalidTextError,
    TTSError,
    VoiceError,
    VoiceSpec,
    collect,
    resolve_language,
    validate_text,
)

from .options import DEFAULT_LANGUAGES

log = logging.getLogger("duplex.openai_tts")

MAX_ERROR_BYTES = 16 * 1024  # of an error body we read
GENERATION_FIELDS = ("speed", "instructions")  # what ``stream(**generation)`` passes on


class OpenAISpeechEngine:
    """See module docstring."""

    name = "openai"

    def __init__(
        self,
        endpoint: str,
        *,
        model: str,
        api_key: str = "",
        send_language: bool = True,
        sample_rate: int = 24_000,
        languages: tuple[str, ...] | list[str] = DEFAULT_LANGUAGES,
        timeout_s: float = 30.0,
        max_text_chars: int = MAX_TEXT_CHARS,
    ):
        url = httpx.URL(endpoint.rstrip("/") + "/audio/speech")
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the speech endpoint must be an http(s) base URL (http://host:8091/v1), got {endpoint!r}")
        self.url = str(url)
        self.model = model
        self.send_language = send_language
        self.sample_rate = int(sample_rate)
        self._languages = tuple(languages)
        self.timeout_s = timeout_s
        self.max_text_chars = max_text_chars
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_keepalive_connections=0),  # a connection per stream: its socket is ours to shut
        )

    @property
    def languages(self) -> tuple[str, ...]:
        return self._languages

    def close(self) -> None:
        self._client.close()

    # --- voices ----------------------------------------------------------------------------------------------------
    def load_voice(self, spec: VoiceSpec) -> str:
        """A registry voice is the endpoint's voice of the same id."""
        return self.voice_from_id(spec.id)

    def voice_from_id(self, voice_id: str) -> str:
        if not isinstance(voice_id, str) or not voice_id.strip() or len(voice_id) > 200:
            raise VoiceError(f"invalid voice id {voice_id!r}")
        return voice_id.strip()

    # --- synthesis -------------------------------------------------------------------------------------------------
    def stream(
        self,
        text: str,
        voice: str,
        language: str = "English",
        cancel: threading.Event | None = None,
        **generation: Any,
    ) -> Iterator[np.ndarray]:
        """Float32 mono chunks at ``sample_rate`` as the endpoint sends them. ``generation``: ``speed`` (0.25-4) and
        ``instructions``, passed on as the API names them."""
        text = validate_text(text, self.max_text_chars)
        lang = resolve_language(language, self.languages)
        voice = self.voice_from_id(voice)
        unknown = set(generation) - set(GENERATION_FIELDS)
        if unknown:
            raise TTSError(f"the speech API takes no option(s) {', '.join(sorted(unknown))}; only speed, instructions")
        payload: dict[str, Any] = {"model": self.model, "input": text, "voice": voice, "response_format": "pcm"}
        payload.update({k: v for k, v in generation.items() if v is not None})
        if self.send_language and lang != "auto":
            payload["language"] = lang
        return self._stream(payload, cancel)

    def _stream(self, payload: dict[str, Any], cancel: threading.Event | None) -> Iterator[np.ndarray]:
        held: list[socket.socket] = []
        lock = threading.Lock()

        def interrupt(reason: str = "set") -> None:
            with lock:
                for sock in held:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the read below at once

        def trace(event: str, info: dict[str, Any]) -> None:
            if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
                sock = info["return_value"].get_extra_info("socket")
                if sock is not None:
                    with lock:
                        held.append(sock)
                    if cancel is not None and cancel.is_set():
                        interrupt()

        watched = watch(cancel, interrupt) if cancel is not None else None
        try:
            with self._client.stream("POST", self.url, json=payload, extensions={"trace": trace}) as response:
                if response.status_code != 200:
                    raise self._http_error(response)
                carry = b""
                for data in response.iter_bytes():
                    if cancel is not None and cancel.is_set():
                        return
                    data = carry + data
                    whole = len(data) - len(data) % 2
                    carry = data[whole:]
                    if whole:
                        yield pcm16_to_float(data[:whole])
        except httpx.HTTPError as e:
            if cancel is not None and cancel.is_set():
                return
            if isinstance(e, httpx.ReadTimeout):
                raise EngineUnavailableError(f"the speech endpoint sent nothing for {self.timeout_s:g} s") from None
            if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
                raise EngineUnavailableError(f"cannot reach the speech endpoint {self.url}: {e}") from None
            raise EngineUnavailableError(f"the speech endpoint ended the stream early: {e}") from None
        finally:
            if watched is not None:
                watched.stop()

    def _http_error(self, response: httpx.Response) -> Exception:
        body = b""
        with contextlib.suppress(httpx.HTTPError):
            for part in response.iter_bytes():
                body += part
                if len(body) > MAX_ERROR_BYTES:
                    break
        message = _error_message(body) or body[:MAX_ERROR_BYTES].decode("utf-8", "replace")
        status = response.status_code
        what = f"the speech endpoint answered {status}: {message}"
        if status in (429, 408) or status >= 500:
            return EngineUnavailableError(what)
        if status == 400 and "voice" in message.lower():
            return VoiceError(what)
        if status == 400 and ("input" in message.lower() or "text" in message.lower()):
            return InvalidTextError(what)
        return TTSError(what)

    def synthesize(self, text: str, voice: str, language: str = "English", **generation: Any) -> np.ndarray:
        return collect(self.stream(text, voice, language, **generation))


def _error_message(body: bytes) -> str | None:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}``), else None."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    detail = data.get("detail") if isinstance(data, dict) else None
    return detail if isinstance(detail, str) else None
