"""``create_llm_service``: the pipecat LLM service that ``LLMOptions`` describes.

``backend == "local"``: ``LocalLLMService`` on the bundled SmolLM2, or on ``settings.model`` when that names a
local model directory or a Hugging Face hub id. Any other backend is the base URL of an OpenAI-compatible chat
completions API (Ollama ``http://localhost:11434/v1``, vLLM ``http://host:8000/v1``, ``https://api.openai.com/v1``),
served by pipecat's ``OpenAILLMService`` with ``settings.model`` as the model name.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .endpoint import OPENAI_HOST, endpoint_api_key
from .options import LLMOptions

if TYPE_CHECKING:
    from pipecat.services.llm_service import LLMService

    from .local_engine import LocalLLMEngine


class LLMEndpointError(ConnectionError):
    """The OpenAI-compatible endpoint could not be reached (pipecat classifies ConnectionError as connectivity)."""


def _openai_compatible_service_class() -> type:
    """``OpenAILLMService`` whose unreachable-endpoint error names the URL (the OpenAI client says only
    "Connection error.")."""
    from openai import APIConnectionError, APITimeoutError
    from pipecat.services.openai.llm import OpenAILLMService

    class OpenAICompatibleLLMService(OpenAILLMService):
        def __init__(self, *, base_url: str, **kwargs: Any):
            super().__init__(base_url=base_url, **kwargs)
            self._endpoint = base_url

        async def get_chat_completions(self, context: Any) -> Any:
            try:
                return await super().get_chat_completions(context)
            except APITimeoutError:
                raise  # pipecat reports timeouts itself ("LLM completion timeout")
            except APIConnectionError as e:
                cause = e.__cause__ or e
                raise LLMEndpointError(f"cannot reach the LLM endpoint {self._endpoint} ({cause})") from e

    return OpenAICompatibleLLMService


def create_llm_service(
    settings: LLMOptions,
    *,
    engine: LocalLLMEngine | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> LLMService:
    """Build the LLM service for ``settings``; extra ``kwargs`` go to the service constructor.

    ``engine`` (local backend only) reuses an already loaded ``LocalLLMEngine``; ``cache_dir`` is the cache root for
    the de-quantised bundled model. Raises ``ValueError`` for a backend that is neither "local" nor an http(s) URL,
    or a URL backend without a model name.
    """
    backend = settings.backend.strip()
    if settings.is_local:
        from .local_service import LocalLLMService

        return LocalLLMService(
            engine=engine,
            model=settings.model or None,
            cache_dir=cache_dir,
            settings=LocalLLMService.Settings(
                system_instruction=settings.system_prompt or None,
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
            ),
            **kwargs,
        )

    url = urlparse(backend)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(
            f"LLM backend must be 'local' or an OpenAI-compatible base URL such as http://localhost:11434/v1, "
            f"got {backend!r}"
        )
    if not settings.model:
        raise ValueError(f"The LLM endpoint {backend} needs a model name (--llm-model, or DUPLEX_LLM__MODEL)")
    is_openai = url.hostname == OPENAI_HOST
    # Without a key the OpenAI client falls back to OPENAI_API_KEY; only OpenAI itself may receive that.
    api_key = endpoint_api_key(settings)
    cls = _openai_compatible_service_class()
    # OpenAI's newer models refuse max_tokens; OpenAI-compatible servers may not know max_completion_tokens.
    limit = {"max_completion_tokens": settings.max_tokens} if is_openai else {"max_tokens": settings.max_tokens}
    return cls(
        api_key=api_key,
        base_url=backend,
        settings=cls.Settings(
            model=settings.model,
            system_instruction=settings.system_prompt or None,
            temperature=settings.temperature,
            **limit,
        ),
        **kwargs,
    )
