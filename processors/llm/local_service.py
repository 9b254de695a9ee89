"""``LocalLLMService``: the pipecat 1.14 adapter for ``LocalLLMEngine``.

It answers ``LLMContextFrame`` (what the user context aggregator pushes) the way pipecat's own LLM services do:
``LLMFullResponseStartFrame``, one ``LLMTextFrame`` per generated piece, ``LLMFullResponseEndFrame``, with TTFB and
processing metrics. The engine runs in a worker thread; whenever the response stops early (``InterruptionFrame``,
``CancelFrame``, a withdrawn eager turn, an error) a ``finally`` sets the engine's cancel event, so generation ends
within one token and the engine is free for the next turn. Failures become ``ErrorFrame``s.

System prompt: the ``system_instruction`` setting (as composed by pipecat) wins, like pipecat's services that take
the instruction separately; without it, an initial system message in the context is used. Tools are not supported
by the local model and are ignored (logged once).

    service = LocalLLMService(settings=LocalLLMService.Settings(system_instruction=DEFAULT_SYSTEM_PROMPT))
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.types import is_given

from .local_engine import LLMInputError, LLMUnavailableError, LocalLLMEngine, get_shared_engine

DEFAULT_MAX_TOKENS = 120
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _text_of(content: Any) -> str:
    """Plain text of an OpenAI-style message content (a string or a list of parts; non-text parts are dropped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def chat_messages(messages: list[dict[str, Any]], system_instruction: str | None) -> list[dict[str, str]]:
    """OpenAI-format context messages -> the system/user/assistant text messages a local chat template takes.

    ``system_instruction`` replaces an initial system message from the context. Tool calls without text are
    dropped; tool results become user messages; empty messages are dropped.
    """
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        text = _text_of(m.get("content")).strip()
        if role == "developer":
            role = "user"
        elif role in ("tool", "function"):
            role, text = "user", f"(tool result) {text}" if text else ""
        if i == 0 and role == "system" and system_instruction:
            continue
        if role not in ("system", "user", "assistant") or not text:
            continue
        out.append({"role": role, "content": text})
    if system_instruction:
        out.insert(0, {"role": "system", "content": system_instruction})
    return out


class LocalLLMService(LLMService):
    """An in-process LLM for pipecat: the bundled SmolLM2, or any local / hub chat model via ``LocalLLMEngine``."""

    Settings = LLMSettings

    def __init__(
        self,
        *,
        engine: LocalLLMEngine | None = None,
        model: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        settings: LLMSettings | None = None,
        **kwargs: Any,
    ):
        """``engine``: a loaded engine (shared freely between services). Without one, the process-wide shared
        engine for ``model`` (None = bundled SmolLM2) is loaded in the background when the pipeline starts; the
        first response waits for it.
        """
        default_settings = LLMSettings(
            model=engine.name if engine is not None else str(model or "SmolLM2-135M-Instruct"),
            system_instruction=None,
            temperature=DEFAULT_TEMPERATURE,
            max_tokens=DEFAULT_MAX_TOKENS,
            top_p=DEFAULT_TOP_P,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
            use_provider_thinking_default=False,
            extra={},
        )
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(settings=default_settings, **kwargs)
        self._engine = engine
        self._model = model
        self._cache_dir = cache_dir
        self._load_task: asyncio.Future[LocalLLMEngine] | None = None
        self._active: set[threading.Event] = set()
        self._warned_tools = False

    def can_generate_metrics(self) -> bool:
        return True

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self, frame: StartFrame):
        await super().start(frame)
        if self._engine is None and self._load_task is None:
            self._start_loading()

    def _start_loading(self) -> None:
        self._load_task = asyncio.ensure_future(
            asyncio.to_thread(get_shared_engine, self._model, cache_dir=self._cache_dir)
        )

        def report(task: asyncio.Future[LocalLLMEngine]) -> None:
            # Retrieve the outcome here so a failed load is logged at start-up, not as "never retrieved" at exit;
            # every later response reports it again as an ErrorFrame.
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.error(f"{self}: the local LLM could not be loaded: {error}")

        self._load_task.add_done_callback(report)

    async def stop(self, frame: EndFrame):
        self._cancel_active()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame):
        self._cancel_active()
        await super().cancel(frame)

    async def cleanup(self):
        self._cancel_active()
        await super().cleanup()

    def _cancel_active(self) -> None:
        for event in list(self._active):
            event.set()

    async def _get_engine(self) -> LocalLLMEngine:
        if self._engine is None:
            if self._load_task is None:  # used without a StartFrame (e.g. run_inference): load now
                self._start_loading()
            # shield: an interruption must not cancel the load itself, only this wait for it
            self._engine = await asyncio.shield(self._load_task)
        return self._engine

    # -- frames ------------------------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, LLMContextFrame):
            try:
                await self.push_frame(LLMFullResponseStartFrame())
                await self.start_processing_metrics()
                await self._process_context(frame.context)
            except LLMUnavailableError as e:
                await self.push_error(
                    error_msg=f"Local LLM unavailable: {e}", exception=e, force_treat_as_permanent=True
                )
            except LLMInputError as e:
                await self.push_error(
                    error_msg=f"Local LLM cannot use this context: {e}", exception=e, category=ErrorCategory.APPLICATION
                )
            except Exception as e:
                await self.push_error(error_msg=f"Local LLM failed: {e}", exception=e)
            finally:
                await self.stop_processing_metrics()
                await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)

    async def _messages(self, context: LLMContext) -> list[dict[str, str]]:
        if context.tools and is_given(context.tools) and not self._warned_tools:
            self._warned_tools = True
            logger.warning(f"{self}: the local LLM does not call tools; the context's tools are ignored")
        params = await self.get_llm_adapter().get_llm_invocation_params(context, convert_developer_to_user=True)
        system = self._settings.system_instruction
        return chat_messages(list(params["messages"]), system if isinstance(system, str) and system else None)

    def _generation_kwargs(self) -> dict[str, Any]:
        s = self._settings

        def given(value: Any, default: Any) -> Any:
            return value if is_given(value) and value is not None else default

        return {
            "max_new_tokens": int(given(s.max_tokens, DEFAULT_MAX_TOKENS)),
            "temperature": float(given(s.temperature, DEFAULT_TEMPERATURE)),
            "top_p": given(s.top_p, None),
            "top_k": given(s.top_k, None),
            "seed": given(s.seed, None),
        }

    async def _process_context(self, context: LLMContext) -> None:
        await self.start_ttfb_metrics()
        engine = await self._get_engine()
        messages = await self._messages(context)
        self._log_llm_response(context)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        kwargs = self._generation_kwargs()

        def post(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                cancel.set()

        def work() -> None:
            try:
                for piece in engine.stream(messages, cancel, **kwargs):
                    post(piece)
                post(_DONE)
            except BaseException as e:  # handed to the event loop, raised there
                post(_Failed(e))

        self._active.add(cancel)
        try:
            # A plain daemon thread, not the default executor: a worker queued behind another session's
            # generation (the engine lock) must not hold an executor slot other services need.
            threading.Thread(target=work, name="duplex-llm-stream", daemon=True).start()
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failed):
                    raise item.error
                await self.stop_ttfb_metrics()
                await self._push_llm_text(item)
        finally:
            cancel.set()  # interruption, cancellation or error: the engine stops after its current token
            self._active.discard(cancel)

    async def run_inference(
        self,
        context: LLMContext,
        max_tokens: int | None = None,
        system_instruction: str | None = None,
        response_schema: dict[str, Any] | None = None,
    ) -> str | None:
        """One out-of-band answer for ``context`` (pipecat uses this for summaries and the like)."""
        self._check_response_schema(response_schema)  # unsupported: warns and ignores it
        engine = await self._get_engine()
        messages = await self._messages(context)
        if system_instruction:
            messages = chat_messages(messages, system_instruction)
        gen = self._generation_kwargs()
        if max_tokens is not None:
            gen["max_new_tokens"] = max_tokens
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(lambda: "".join(engine.stream(messages, cancel, **gen)))
        finally:
            cancel.set()
