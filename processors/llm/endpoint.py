"""``check_endpoint``: does an OpenAI-compatible endpoint answer, accept the key, and serve the model? Asked once when
the engines load, so that a wrong URL, a stopped server or a misspelt model is a message at start rather than a
voice session that sits on "thinking" after the user's first question.

One ``GET {base}/models`` with a short timeout. An endpoint that does not list its models (404, 405, a body that is
not the OpenAI list) is accepted as it is; the first chat request tells.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .local_engine import LLMUnavailableError
from .options import LLMOptions

CHECK_TIMEOUT_S = 5.0
OPENAI_HOST = "api.openai.com"
PLACEHOLDER_API_KEY = "not-needed"  # local servers (Ollama, vLLM) ignore the key, but the OpenAI client needs one


def endpoint_api_key(options: LLMOptions) -> str | None:
    """The key sent to the endpoint: the configured one; for OpenAI itself None (the client reads OPENAI_API_KEY);
    for any other host a placeholder, so that an OPENAI_API_KEY in the environment never leaves for it."""
    if options.api_key:
        return options.api_key
    return None if urlparse(options.backend.strip()).hostname == OPENAI_HOST else PLACEHOLDER_API_KEY


@dataclass(frozen=True)
class EndpointCheck:
    """What the check found: shown on ``/healthz`` under the LLM engine."""

    url: str
    model: str
    listed: tuple[str, ...] | None  # the models the endpoint lists; None when it does not list them
    latency_ms: float

    def describe(self) -> dict[str, Any]:
        return {"endpoint": {"url": self.url, "reachable": True, "latencyMs": round(self.latency_ms)}}


def _serves(listed: tuple[str, ...], model: str) -> bool:
    # Ollama lists "llama3.2:latest" and answers to "llama3.2"
    return any(m == model or m.startswith(model + ":") for m in listed)


def check_endpoint(options: LLMOptions, timeout: float = CHECK_TIMEOUT_S) -> EndpointCheck:
    """Ask the endpoint for its models; raise ``LLMUnavailableError`` saying what to do when it cannot be used."""
    import httpx

    url = options.backend.strip().rstrip("/")
    key = endpoint_api_key(options)
    if key is None:
        import os

        key = os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.perf_counter()
    try:
        r = httpx.get(f"{url}/models", headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise LLMUnavailableError(
            f"the LLM endpoint {url} did not answer within {timeout:g} s: is it the right address (--llm)?"
        ) from None
    except httpx.HTTPError as e:
        reason = str(e) or type(e).__name__
        raise LLMUnavailableError(
            f"cannot reach the LLM endpoint {url} ({reason}): start it, or fix the address (--llm)"
        ) from None
    latency_ms = (time.perf_counter() - t0) * 1000
    if r.status_code in (401, 403):
        raise LLMUnavailableError(
            f"the LLM endpoint {url} refused the API key (HTTP {r.status_code}): check --llm-api-key "
            "(DUPLEX_LLM__API_KEY)"
        )
    listed: tuple[str, ...] | None = None
    if r.status_code == 200:
        try:
            listed = tuple(str(m["id"]) for m in r.json()["data"])
        except Exception:
            listed = None
    if listed is not None and listed and not _serves(listed, options.model):
        shown = ", ".join(listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")
        raise LLMUnavailableError(
            f"the LLM endpoint {url} does not serve the model {options.model!r} (--llm-model); it serves: {shown}"
        )
    return EndpointCheck(url=url, model=options.model, listed=listed, latency_ms=latency_ms)
