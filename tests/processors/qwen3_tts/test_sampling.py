"""``sampling.RowSampler`` against HF's own logits processors (the ones upstream's generate runs), row by row and in
mixed batches; and non-finite logits, which must end a stream with ``NumericalError`` instead of reaching
``torch.multinomial`` (on CUDA a device-side assert that kills the process; on a CPU a RuntimeError)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from processors.qwen3_tts import Qwen3TTSEngine
from processors.qwen3_tts.batching import BatchScheduler
from processors.qwen3_tts.cuda_graphs import CudaGraphTalker
from processors.qwen3_tts.frame_loop import _pick, _processors, capture_prompt
from processors.qwen3_tts.lean_loop import LeanFrameLoop, LeanTalker
from processors.qwen3_tts.sampling import NumericalError, RowSampler, SamplingSettings
from processors.qwen3_tts.voice import to_model_device
from testkit.cuda_graph_emulator import EmulatedGraphRunner
from testkit.qwen3_tts_model import make_reference_audio

V, EOS = 3072, 2150
SUPPRESS = [i for i in range(V - 1024, V) if i != EOS]
SETTINGS = [
    SamplingSettings(do_sample=False),
    SamplingSettings(do_sample=False, repetition_penalty=1.3, min_new_tokens=3),
    SamplingSettings(do_sample=True, temperature=0.9, top_k=50, repetition_penalty=1.05, min_new_tokens=2),
    SamplingSettings(do_sample=True, temperature=0.6, top_k=0, top_p=0.8),
    SamplingSettings(do_sample=True, temperature=1.0, top_k=7, top_p=0.5, repetition_penalty=0.9),
]


def _hf(s: SamplingSettings, history: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    procs = _processors(do_sample=s.do_sample, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                        repetition_penalty=s.repetition_penalty, min_new_tokens=s.min_new_tokens, eos=EOS,
                        suppress=SUPPRESS, device=logits.device)  # fmt: skip
    return _pick(procs(history, logits.float()), s.do_sample)


@pytest.mark.parametrize("settings", SETTINGS, ids=range(len(SETTINGS)))
def test_one_row_equals_hf_processors(settings):
    """Same tokens as HF's processor list + pick, step after step with the same seed (history, penalty, guard)."""
    sampler = RowSampler(2, V, torch.device("cpu"), track=True)
    sampler.set_row(1, settings, suppress=SUPPRESS, eos=EOS)
    gen = torch.Generator().manual_seed(3)
    history = torch.zeros(1, 0, dtype=torch.long)
    for step in range(12):
        logits = torch.randn(1, V, generator=gen) * 4
        logits[0, EOS] += 6 if step < 4 else 0  # EOS would win early: the min-new-tokens guard must hold it back
        logits[0, history[0, -3:]] += 3  # recent tokens score high: the penalty matters
        torch.manual_seed(100 + step)
        ours, bad = sampler.sample(logits, 1, 1)
        torch.manual_seed(100 + step)
        ref = _hf(settings, history, logits)
        assert torch.equal(ours, ref) and not bad.any(), f"step {step}"
        history = torch.cat([history, ref.view(1, 1)], dim=1)


def test_mixed_rows_each_follow_their_own_settings():
    """A batch of rows with different settings: greedy rows equal HF greedy exactly whatever the others do; sampled
    rows draw only tokens their own top-k / top-p keep; the fixed-work form (graphs) gives the same greedy rows."""
    sampler = RowSampler(len(SETTINGS), V, torch.device("cpu"), track=True)
    for row, s in enumerate(SETTINGS):
        sampler.set_row(row, s, suppress=SUPPRESS, eos=EOS)
    logits = torch.randn(len(SETTINGS), V, generator=torch.Generator().manual_seed(1)) * 4
    empty = torch.zeros(1, 0, dtype=torch.long)
    for static in (False, True):
        for _ in range(20):
            tokens, bad = sampler.sample(logits, 0, len(SETTINGS), static=static)
            assert not bad.any()
            for row in (0, 1):
                assert int(tokens[row]) == int(_hf(SETTINGS[row], empty, logits[row : row + 1]))
            top7 = set(torch.topk(logits[4], 7).indices.tolist())
            assert int(tokens[4]) in top7
            assert all(int(t) not in SUPPRESS for t in tokens)
            sampler.set_row(0, SETTINGS[0], suppress=SUPPRESS, eos=EOS)  # fresh history for the greedy rows
            sampler.set_row(1, SETTINGS[1], suppress=SUPPRESS, eos=EOS)


def test_non_finite_rows_are_flagged_never_sampled():
    sampler = RowSampler(3, V, torch.device("cpu"))
    for row in range(3):
        sampler.set_row(row, SETTINGS[2])
    logits = torch.randn(3, V)
    logits[1, 5] = float("nan")
    logits[2, :] = float("-inf")  # nothing left to draw
    tokens, bad = sampler.sample(logits, 0, 3, static=True)  # CPU multinomial raises on such rows: it never sees them
    assert bad.tolist() == [False, True, True] and tokens[1:].tolist() == [0, 0]


def test_settings_validated_before_any_frame():
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(do_sample=True, top_p=1.5)


# --------------------------------------------------------------------------------------------------------------------
# Non-finite logits in the loops
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)


@pytest.fixture(scope="module")
def voice(engine):
    return engine.create_voice((make_reference_audio(4.0, 24000, seed=1), 24000))


def _prompt(engine, voice, text, poison_frame=None, **gen):
    """A prompt whose text row for ``poison_frame`` is NaN: that stream's talker turns NaN from there on."""
    p = capture_prompt(engine.tts_model, text=text, language="English",
                       voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)], **gen)  # fmt: skip
    if poison_frame is not None and poison_frame < p.trailing_text_hidden.shape[1]:
        p.trailing_text_hidden = p.trailing_text_hidden.clone()
        p.trailing_text_hidden[0, poison_frame] = float("nan")
    elif poison_frame is not None:  # frames past the text add tts_pad (ICL prompts carry the text up front)
        p.tts_pad_embed = torch.full_like(p.tts_pad_embed, float("nan"))
    return p


@pytest.mark.parametrize("gen", [{}, dict(do_sample=False, subtalker_dosample=False)], ids=["sampled", "greedy"])
def test_nan_ends_the_stream_with_numerical_error(engine, voice, gen):
    """The frames before the NaN arrive, then ``NumericalError`` (sampled: no multinomial on NaN; greedy: no silent
    garbage); the talker serves the next stream normally."""
    lean = LeanTalker(engine.tts_model.model.talker)
    got = []
    with pytest.raises(NumericalError, match="frame 4"):
        for codes in LeanFrameLoop(lean, _prompt(engine, voice, "Hello there, a poisoned stream.", 3, **gen),
                                   20).frames():  # fmt: skip
            got.append(codes.clone())
    assert len(got) == 4
    clean = _prompt(engine, voice, "Hello there, a clean stream.", **gen)
    assert len(list(LeanFrameLoop(lean, clean, 8).frames())) == 8


def test_nan_in_one_batched_stream_leaves_the_others_and_its_slot_clean(engine, voice):
    """In a batch (masked attention, emulated CUDA graphs) the poisoned stream raises; the stream beside it and the
    stream that takes the poisoned slot afterwards both get their solo codes (its NaN cache rows were cleared)."""
    greedy = dict(do_sample=False, subtalker_dosample=False)
    talker = engine.tts_model.model.talker
    # the poisoned stream's NaN cache rows lie beyond every position the other two streams reach
    long_voice = engine.create_voice((make_reference_audio(8.0, 24000, seed=2), 24000), "A longer reference clip.")
    bad = _prompt(engine, long_voice, "A poisoned stream.", 4, **greedy)
    good, after = _prompt(engine, voice, "Hi.", **greedy), _prompt(engine, voice, "Bye.", **greedy)
    assert good.inputs_embeds.shape[1] + 16 < bad.inputs_embeds.shape[1]
    solo = lambda p, n: torch.stack([c.clone() for c in LeanFrameLoop(LeanTalker(talker, attention="masked"), p,
                                                                      n).frames()])  # fmt: skip
    with BatchScheduler(talker, max_batch=2) as sched:
        sched.lean = CudaGraphTalker(talker, 2, runner=EmulatedGraphRunner(), base_positions=256)
        sched.warmup()
        s_bad, s_good = sched.submit(bad, 20), sched.submit(good, 16)
        out: dict[str, object] = {}

        def consume(name, s):
            try:
                out[name] = torch.stack([c.clone() for c in s.frames()])
            except Exception as e:
                out[name] = e

        threads = [threading.Thread(target=consume, args=a) for a in (("bad", s_bad), ("good", s_good))]
        threads[0].start()
        while s_bad.slot < 0 and "bad" not in out:  # the poisoned stream takes slot 0
            time.sleep(0.001)
        threads[1].start()
        [t.join(timeout=60) for t in threads]
        assert isinstance(out["bad"], NumericalError)
        assert torch.equal(out["good"], solo(good, 16))
        s_after = sched.submit(after, 12)
        assert torch.equal(torch.stack([c.clone() for c in s_after.frames()]), solo(after, 12))
