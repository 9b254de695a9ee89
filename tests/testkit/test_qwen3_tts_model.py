"""The random Qwen3-TTS model directory: upstream's own loader reads it offline, both cloning modes work, it stops
where ``expected_frames`` says, ``never_eos`` runs to the budget, and builds are reproducible byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from processors.audio import CODEC_FRAME_SAMPLES, TTS_SAMPLE_RATE
from processors.compat import ensure_qwen_tts_importable
from testkit.qwen3_tts_model import (
    CODEC_IDS,
    LANGUAGE_IDS,
    build_random_model_dir,
    expected_frames,
    make_reference_audio,
    model_config,
    speech_tokenizer_config,
)

GREEDY = dict(do_sample=False, subtalker_dosample=False)  # talker and code predictor both greedy
REF_TEXT = "A short reference sentence for cloning."
TEXT = "Hello there, this is a test."


@contextlib.contextmanager
def no_network():
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading a local model")

    with mock.patch.object(socket.socket, "connect", refuse), mock.patch.object(socket, "create_connection", refuse):
        yield


def load(path: Path):
    ensure_qwen_tts_importable()
    from qwen_tts import Qwen3TTSModel

    with no_network():
        return Qwen3TTSModel.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tts(tiny_qwen_dir):
    torch.set_num_threads(1)
    return load(tiny_qwen_dir)


@pytest.fixture(scope="module")
def reference():
    return make_reference_audio(4.0, TTS_SAMPLE_RATE, seed=1), TTS_SAMPLE_RATE


def n_tokens(tts, text: str) -> int:
    return len(tts.processor.tokenizer.encode(text, add_special_tokens=False))


def check_audio(wavs, sr) -> np.ndarray:
    assert sr == TTS_SAMPLE_RATE and len(wavs) == 1
    wav = wavs[0]
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    assert float(np.sqrt(np.mean(wav**2))) > 0.01, "output must be audible, not ~0"
    return wav


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_directory_has_the_upstream_layout(tiny_qwen_dir, tts):
    names = set(digests(tiny_qwen_dir))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "speech_tokenizer/config.json", "speech_tokenizer/model.safetensors",
            "speech_tokenizer/preprocessor_config.json"} <= names  # fmt: skip
    size = sum(p.stat().st_size for p in tiny_qwen_dir.rglob("*") if p.is_file())
    assert 5e6 < size < 20e6
    cfg = json.loads((tiny_qwen_dir / "config.json").read_text())
    talker = cfg["talker_config"]
    assert cfg["tts_model_type"] == "base" and cfg["tokenizer_type"] == "qwen3_tts_tokenizer_12hz"
    assert {k: talker[k] for k in CODEC_IDS} == CODEC_IDS and talker["codec_eos_token_id"] == 2150
    assert talker["vocab_size"] == 3072 and talker["num_code_groups"] == 16
    assert talker["codec_language_id"] == LANGUAGE_IDS and len(LANGUAGE_IDS) == 10
    tok = tts.processor.tokenizer
    assert talker["text_vocab_size"] == len(tok)
    for key, token in [("im_start_token_id", "<|im_start|>"), ("im_end_token_id", "<|im_end|>"),
                       ("tts_pad_token_id", "<tts_pad>"), ("tts_bos_token_id", "<tts_text_bos>"),
                       ("tts_eos_token_id", "<tts_text_eod>")]:  # fmt: skip
        assert tok.convert_ids_to_tokens(cfg[key]) == token
    codec = json.loads((tiny_qwen_dir / "speech_tokenizer" / "config.json").read_text())
    assert (
        codec["decode_upsample_rate"]
        == CODEC_FRAME_SAMPLES
        == int(np.prod(codec["decoder_config"]["upsample_rates"] + codec["decoder_config"]["upsampling_ratios"]))
    )
    assert codec["decoder_config"]["num_quantizers"] == codec["encoder_valid_num_quantizers"] == 16


def test_prompt_template_splits_where_upstream_slices(tts):
    """Upstream speaks ``input_ids[:, 3:-5]``: role prefix and tail must be exactly 3 and 5 tokens."""
    ids = tts._tokenize_texts([tts._build_assistant_text(TEXT)])[0][0].tolist()
    tok = tts.processor.tokenizer
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<|im_start|>", "assistant", "Ċ"]
    assert tok.convert_ids_to_tokens(ids[-5:]) == ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]
    assert ids[3:-5] == tok.encode(TEXT, add_special_tokens=False)


def test_loads_as_a_base_model(tts):
    assert tts.model.tts_model_type == "base" and tts.model.tokenizer_type == "qwen3_tts_tokenizer_12hz"
    assert set(tts.get_supported_languages()) == {"auto", *LANGUAGE_IDS}
    assert tts.model.speech_tokenizer.get_output_sample_rate() == TTS_SAMPLE_RATE
    assert next(tts.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("text", ["Hi.", TEXT])
def test_x_vector_clone_stops_where_expected(tts, reference, text):
    wav = check_audio(*tts.generate_voice_clone(text=text, language="English", ref_audio=reference,
                                                x_vector_only_mode=True, **GREEDY))  # fmt: skip
    assert len(wav) == expected_frames(n_tokens(tts, text)) * CODEC_FRAME_SAMPLES


def test_icl_clone_stops_where_expected(tts, reference):
    prompt = tts.create_voice_clone_prompt(ref_audio=reference, ref_text=REF_TEXT)[0]
    assert prompt.icl_mode and prompt.ref_code.shape == (50, 16)  # 4 s at 12.5 Hz, 16 codebooks
    assert 0 <= int(prompt.ref_code.min()) and int(prompt.ref_code.max()) < 2048
    assert len(set(prompt.ref_code[:, 0].tolist())) > 1, "the codec encoder must not map everything to one code"
    assert prompt.ref_spk_embedding.shape == (32,) and torch.isfinite(prompt.ref_spk_embedding).all()
    wav = check_audio(*tts.generate_voice_clone(text=TEXT, language="English", voice_clone_prompt=[prompt], **GREEDY))
    frames = expected_frames(n_tokens(tts, TEXT), ref_text_tokens=n_tokens(tts, REF_TEXT), ref_frames=50)
    assert frames >= 4
    # upstream decodes reference + new codes and cuts the reference with int(), which may keep one extra sample
    assert 0 <= len(wav) - frames * CODEC_FRAME_SAMPLES <= 1


def test_sampling_stops_at_the_same_frame(tts, reference):
    torch.manual_seed(0)
    wav = check_audio(*tts.generate_voice_clone(text=TEXT, language="Auto", ref_audio=reference,
                                                x_vector_only_mode=True))  # fmt: skip
    assert len(wav) == expected_frames(n_tokens(tts, TEXT), language=False) * CODEC_FRAME_SAMPLES


def test_greedy_generation_is_deterministic(tts, reference):
    runs = [tts.generate_voice_clone(text="Hi.", language="English", ref_audio=reference, x_vector_only_mode=True,
                                     **GREEDY)[0][0] for _ in range(2)]  # fmt: skip
    assert np.array_equal(runs[0], runs[1])


def test_never_eos_runs_to_max_new_tokens(tiny_qwen_never_eos_dir, reference):
    tts = load(tiny_qwen_never_eos_dir)
    wav = check_audio(*tts.generate_voice_clone(text="Hi.", language="English", ref_audio=reference,
                                                x_vector_only_mode=True, max_new_tokens=14, **GREEDY))  # fmt: skip
    assert expected_frames(n_tokens(tts, "Hi.")) < 13
    assert len(wav) == 13 * CODEC_FRAME_SAMPLES  # upstream returns max_new_tokens - 1 frames


def test_builds_are_reproducible(tmp_path, tiny_qwen_dir, tiny_qwen_never_eos_dir):
    from safetensors.torch import load_file

    first = digests(tiny_qwen_dir)
    assert digests(build_random_model_dir(tmp_path / "again", "tiny", seed=0)) == first
    other = digests(build_random_model_dir(tmp_path / "seed1", "tiny", seed=1))
    assert other["model.safetensors"] != first["model.safetensors"]
    assert other["speech_tokenizer/model.safetensors"] != first["speech_tokenizer/model.safetensors"]
    assert other["tokenizer.json"] == first["tokenizer.json"]
    # never_eos differs only in the EOS row of the codec head
    a, b = (load_file(str(d / "model.safetensors")) for d in (tiny_qwen_dir, tiny_qwen_never_eos_dir))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == ["talker.codec_head.weight"]
    rows = (a["talker.codec_head.weight"] != b["talker.codec_head.weight"]).any(dim=1).nonzero().flatten().tolist()
    assert rows == [CODEC_IDS["codec_eos_token_id"]]


def test_bad_arguments(tmp_path, tiny_qwen_dir):
    with pytest.raises(ValueError):
        build_random_model_dir(tmp_path / "x", "huge")  # type: ignore[arg-type]
    with pytest.raises(FileExistsError):
        build_random_model_dir(tiny_qwen_dir)
    assert not list(tmp_path.iterdir()), "a failed build leaves nothing behind"


def test_full_preset_configs_have_the_real_sizes():
    """The "full" preset is built by benchmarks only (~1 min, 2.5 GB); its configs are checked here."""
    ensure_qwen_tts_importable()
    from qwen_tts.core import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.models import Qwen3TTSConfig

    ids = dict(im_start_token_id=1, im_end_token_id=2, tts_pad_token_id=3, tts_bos_token_id=4, tts_eos_token_id=5)
    cfg = Qwen3TTSConfig(**model_config("full", ids, text_vocab_size=531))
    t, cp, spk = cfg.talker_config, cfg.talker_config.code_predictor_config, cfg.speaker_encoder_config
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (
        28,
        1024,
        16,
        8,
        128,
    )
    assert (t.intermediate_size, t.rope_theta, t.rope_scaling["mrope_section"]) == (3072, 1000000, [24, 20, 20])
    assert (t.text_vocab_size, t.text_hidden_size, t.vocab_size) == (151936, 2048, 3072)
    assert (cp.num_hidden_layers, cp.hidden_size, cp.vocab_size, cp.num_code_groups) == (5, 1024, 2048, 16)
    assert spk.enc_dim == t.hidden_size and spk.mel_dim == 128
    codec = Qwen3TTSTokenizerV2Config(**speech_tokenizer_config("full"))
    dec = codec.decoder_config
    assert (dec.num_hidden_layers, dec.hidden_size, dec.latent_dim, dec.decoder_dim, dec.sliding_window) == (
        8,
        512,
        1024,
        1536,
        72,
    )
    assert codec.encoder_config.frame_rate == 12.5 and codec.encoder_config.num_quantizers == 32


def test_reference_audio_is_deterministic_voiced_speechlike():
    a = make_reference_audio(4.0, 24000, seed=3)
    assert a.dtype == np.float32 and a.shape == (96000,)
    assert np.array_equal(a, make_reference_audio(4.0, 24000, seed=3))
    assert not np.array_equal(a, make_reference_audio(4.0, 24000, seed=4))
    assert abs(float(np.abs(a).max()) - 0.5) < 1e-6
    frames = a[: len(a) // 240 * 240].reshape(-1, 240)  # 10 ms
    rms = np.sqrt((frames**2).mean(axis=1))
    quiet = float(np.mean(rms < 0.05 * rms.max()))
    assert 0.05 < quiet < 0.6, "syllables with pauses, not a steady tone"
    spectrum = np.abs(np.fft.rfft(a)) ** 2
    freqs = np.fft.rfftfreq(len(a), 1 / 24000)
    assert spectrum[freqs < 4000].sum() > 0.95 * spectrum.sum(), "voiced energy sits below 4 kHz"
    assert make_reference_audio(1.5, 16000).shape == (24000,)


def test_clone_from_a_real_speech_recording(tts):
    """ICL cloning from a synthetic-speech WAV (flite) and its transcript."""
    from testkit.clips import clip_names, manifest_entry, speech

    item = next(e for e in map(manifest_entry, clip_names("flite_")) if 3.0 <= e["seconds"] <= 10.0)
    samples = speech(item["file"], TTS_SAMPLE_RATE)  # (upstream's librosa import costs ~3 s)
    prompt = tts.create_voice_clone_prompt(ref_audio=(samples, TTS_SAMPLE_RATE), ref_text=item["text"])[0]
    ref_frames = int(prompt.ref_code.shape[0])
    assert abs(ref_frames - item["seconds"] * 12.5) <= 1
    wav = check_audio(*tts.generate_voice_clone(text="Hi.", language="English", voice_clone_prompt=[prompt],
                                                max_new_tokens=200, **GREEDY))  # fmt: skip
    frames = expected_frames(n_tokens(tts, "Hi."), ref_text_tokens=n_tokens(tts, item["text"]), ref_frames=ref_frames)
    assert 0 <= len(wav) - frames * CODEC_FRAME_SAMPLES <= 1
