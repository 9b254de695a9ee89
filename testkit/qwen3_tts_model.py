"""A loadable, randomly initialised Qwen3-TTS-12Hz Base model directory, built offline with qwen-tts's own classes.

Why: the real checkpoint cannot be downloaded here, but tests and benchmarks need the exact upstream code path
(``Qwen3TTSModel.from_pretrained`` -> ``create_voice_clone_prompt`` -> ``generate_voice_clone``: tokenizer, talker,
code predictor, speaker encoder, Mimi codec encoder, 12 Hz codec decoder). ``build_random_model_dir`` writes the same
files as the Hugging Face repo (``config.json``, ``generation_config.json``, ``model.safetensors``, Qwen2 tokenizer
files, ``speech_tokenizer/{config.json, model.safetensors, preprocessor_config.json}``).

Presets:

* ``"tiny"`` (unit tests): talker hidden 32 / 2 layers, code predictor 1 layer, small speaker encoder, Mimi encoder and
  codec decoder; 12 MB, builds in ~0.4 s, loads in ~0.2 s, ~35 ms per frame. The codec vocabulary (3072), the codec
  control ids (EOS 2150 ...), the 16 codebooks and the 1920-sample frame are the real ones; the text vocabulary is the
  small BPE below.
* ``"full"``: the real 0.6B-Base sizes (``FULL_TALKER``, ``FULL_CODE_PREDICTOR``, ``FULL_SPEAKER_ENCODER``,
  ``FULL_CODEC_ENCODER``, ``FULL_CODEC_DECODER``, text embedding 151936 x 2048) with random weights, so compute and
  memory are honest (benchmarks only). The tokenizer is the same small BPE; ids beyond it are unused rows.

The text tokenizer is a byte-level BPE trained here with ``tokenizers`` on a small built-in corpus (Qwen2's
pre-tokenizer regex), wrapped in ``Qwen2TokenizerFast``, with the special tokens the model needs. ``<|im_start|>``,
``assistant`` and ``\\n`` are single tokens, as upstream's ``input_ids[:, 3:-5]`` slicing requires. It is coarser than
Qwen's (531 entries: common words are 1-2 tokens, unseen words fall apart into bytes), which matters for lengths below.

Stopping (random weights would make EOS arbitrary): a small hand-set circuit makes the talker stop like a speaker
who has finished the text. Three residual dimensions are reserved (``_C_ONE`` a large constant, ``_C_FEAT`` a
per-position feature, ``_C_CNT`` a running mean); no random module reads or writes them, so the content path is an
ordinary random transformer. Every talker input position carries exactly one text-side term (a text token, a control
token, or ``<tts_pad>``); the text projection writes ``+1`` into ``_C_FEAT`` for ``<tts_pad>``, ``-1.25`` for
``<tts_text_bos>`` (once per prompt) and ``-1.5`` for anything else. One layer-0 attention head has a zero query
(uniform attention) and reads ``_C_FEAT``: its output is the mean feature over the sequence so far. The EOS row of the
codec head reads that mean with a large gain, so greedy or sampled decoding emits EOS as soon as
``#pad - 1.5 * #text + 0.25 > 0`` (never a tie): about 2.5 frames (200 ms) per text token. x-vector mode:
frames = floor(2.5 * text tokens + 1.25) + 2 (13 tokens -> 35 frames). ICL mode counts the reference the same way:
frames ~ 2.5 * (transcript tokens + text tokens) + 3 - reference frames, at least upstream's minimum of 2 (a
reference spoken slower than 2.5 frames per transcript token shortens the output). ``expected_frames`` replays the
rule exactly (float32 inference). ``never_eos=True`` instead pins the EOS logit at about -1e4.

Determinism: same preset + seed -> byte-identical files (torch's global RNG is forked, not disturbed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from processors.audio import CODEC_FRAME_SAMPLES, TTS_SAMPLE_RATE

Preset = Literal["tiny", "full"]

# --------------------------------------------------------------------------------------------------------------------
# Real Qwen3-TTS-12Hz-0.6B-Base values (config.json / speech_tokenizer/config.json of the Hugging Face repo)
# --------------------------------------------------------------------------------------------------------------------

CODEC_VOCAB_SIZE = 3072  # codebook 0: 2048 codes + control ids; upstream suppresses [2048, 3072) except EOS
CODEBOOK_SIZE = 2048
NUM_CODE_GROUPS = 16
CODEC_IDS: dict[str, int] = dict(
    codec_pad_id=2148, codec_bos_id=2149, codec_eos_token_id=2150,
    codec_think_id=2154, codec_nothink_id=2155, codec_think_bos_id=2156, codec_think_eos_id=2157,
)  # fmt: skip
LANGUAGE_IDS: dict[str, int] = {
    "chinese": 2055, "english": 2050, "german": 2053, "italian": 2070, "portuguese": 2071,
    "spanish": 2054, "japanese": 2058, "korean": 2064, "french": 2061, "russian": 2069,
}  # fmt: skip
REAL_TEXT_VOCAB_SIZE = 151936
MROPE = {"interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default", "type": "default"}

FULL_TALKER: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, max_position_embeddings=32768, rope_theta=1000000, rope_scaling=MROPE,
    text_hidden_size=2048, text_vocab_size=REAL_TEXT_VOCAB_SIZE,
)  # fmt: skip
FULL_CODE_PREDICTOR: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, max_position_embeddings=65536, rope_theta=1000000,
)  # fmt: skip
FULL_SPEAKER_ENCODER: dict[str, Any] = dict(
    mel_dim=128, enc_dim=1024, enc_channels=[512, 512, 512, 512, 1536], enc_kernel_sizes=[5, 3, 3, 3, 1],
    enc_dilations=[1, 2, 3, 4, 1], enc_attention_channels=128, enc_res2net_scale=8, enc_se_channels=128,
)  # fmt: skip
FULL_CODEC_ENCODER: dict[str, Any] = dict(  # transformers MimiConfig (encoder half only is instantiated)
    audio_channels=1, num_filters=64, kernel_size=7, residual_kernel_size=3, last_kernel_size=3,
    num_residual_layers=1, dilation_growth_rate=2, compress=2, upsampling_ratios=[8, 6, 5, 4], hidden_size=512,
    num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, head_dim=64, intermediate_size=2048,
    hidden_act="gelu", norm_eps=1e-5, layer_scale_initial_scale=0.01, rope_theta=10000.0,
    max_position_embeddings=8000, sliding_window=250, num_quantizers=32, num_semantic_quantizers=1,
    codebook_size=CODEBOOK_SIZE, codebook_dim=256, vector_quantization_hidden_dimension=256, upsample_groups=512,
    pad_mode="constant", use_causal_conv=True, use_conv_shortcut=False, trim_right_ratio=1.0, use_cache=False,
    frame_rate=12.5, sampling_rate=TTS_SAMPLE_RATE,
)  # fmt: skip
FULL_CODEC_DECODER: dict[str, Any] = dict(
    codebook_size=CODEBOOK_SIZE, codebook_dim=512, latent_dim=1024, hidden_size=512, intermediate_size=1024,
    num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16, head_dim=64, hidden_act="silu",
    rms_norm_eps=1e-5, layer_scale_initial_scale=0.01, rope_theta=10000, max_position_embeddings=8000,
    sliding_window=72, num_quantizers=NUM_CODE_GROUPS, num_semantic_quantizers=1, semantic_codebook_size=4096,
    vector_quantization_hidden_dimension=512, upsample_rates=[8, 5, 4, 3], upsampling_ratios=[2, 2],
    decoder_dim=1536, attention_bias=False, attention_dropout=0.0,
)  # fmt: skip

TINY_TALKER: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=32768, rope_theta=1000000,
    rope_scaling={**MROPE, "mrope_section": [4, 2, 2]},  # sums to head_dim / 2, like [24, 20, 20] for 128
    text_hidden_size=32,
)  # fmt: skip
TINY_CODE_PREDICTOR: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    head_dim=16, max_position_embeddings=65536, rope_theta=1000000,
)  # fmt: skip
TINY_SPEAKER_ENCODER: dict[str, Any] = dict(
    mel_dim=128, enc_dim=32, enc_channels=[32, 32, 32, 32, 96], enc_kernel_sizes=[5, 3, 3, 3, 1],
    enc_dilations=[1, 2, 3, 4, 1], enc_attention_channels=16, enc_res2net_scale=4, enc_se_channels=16,
)  # fmt: skip
TINY_CODEC_ENCODER: dict[str, Any] = {
    **FULL_CODEC_ENCODER,
    **dict(num_filters=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
           head_dim=8, intermediate_size=32, num_quantizers=16, codebook_dim=8,
           vector_quantization_hidden_dimension=8, upsample_groups=16),
}  # fmt: skip
TINY_CODEC_DECODER: dict[str, Any] = {
    **FULL_CODEC_DECODER,
    **dict(codebook_dim=16, latent_dim=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
           num_attention_heads=2, num_key_value_heads=2, head_dim=16, vector_quantization_hidden_dimension=16,
           decoder_dim=64),
}  # fmt: skip

GENERATION_CONFIG: dict[str, Any] = dict(
    do_sample=True, repetition_penalty=1.05, temperature=0.9, top_p=1.0, top_k=50,
    subtalker_dosample=True, subtalker_temperature=0.9, subtalker_top_p=1.0, subtalker_top_k=50, max_new_tokens=8192,
)  # fmt: skip

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>"]
BPE_VOCAB_SIZE = 2000

# Stop circuit (see the module docstring).
PADS_PER_TEXT_TOKEN = 1.5  # -> about 2.5 frames (200 ms) per text token
_BOS_OFFSET = 0.25  # <tts_text_bos> (once per prompt) weighs -1.25: the sum is never 0, so the rule never ties
_C_ONE, _C_FEAT, _C_CNT = 0, 1, 2  # reserved residual dimensions of the talker
_CONTROL = [_C_ONE, _C_FEAT, _C_CNT]
_T_PAD, _T_BOS = 0, 1  # reserved text-embedding dimensions: 1 only for <tts_pad> / <tts_text_bos>
_U_PAD, _U_BOS = 0, 1  # the text projection's hidden units that detect them
_BIG = 64.0  # _C_ONE = _BIG * sqrt(hidden): per-position RMS differences at layer 0 shrink to ~1e-4 / position
_EOS_GAIN = 1.0e8  # a quarter feature unit past the threshold is > 50 logits even at several thousand positions
# All circuit constants are exact in bfloat16 (the "full" checkpoint is stored in bf16, like the real one).
_CONTENT_LOGIT_STD = 2.0  # spread of codebook-0 logits, so that greedy and sampled codes vary

# Qwen2's pre-tokenizer split (same as Qwen2TokenizerFast's tokenizer.json).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Varied English (plus a little of the other nine languages) so the merges look like sub-words; nothing depends on it.
_CORPUS = """\
Hello there, how are you doing today? I am fine, thank you very much for asking.
What is the weather like in Paris this morning? It is sunny, with a light breeze from the west.
Please tell me a short story about a cat and a dog who become friends in a small village.
The quick brown fox jumps over the lazy dog while the children watch from the window.
Can you book a table for two at seven o'clock tonight? We would like to sit near the garden.
I would like to order a large pizza with mushrooms, olives, and extra cheese, please.
Turn off the lights in the kitchen and the living room before you go to bed.
Where is the nearest train station from here? Walk two blocks north and then turn left.
Thank you, that was really helpful. Could you repeat that a little more slowly, please?
My name is Anna and I live in a small town near the sea, where the summers are long and warm.
Set an alarm for six thirty tomorrow morning, and remind me to call my mother at noon.
The meeting has been moved to Thursday afternoon, so please send the report to everyone before lunch.
How many people live in the city of London? About nine million people live there today.
This is a short reference recording for the voice prompt, spoken clearly and at a natural pace.
A short reference sentence for cloning. Hello world, this is a test of the speech system.
Streaming speech synthesis lets the listener hear the first words while the rest is still being generated.
The assistant answered the user's question, and the user thanked the assistant for the quick answer.
Numbers like 1, 2, 3, 10, 42, 100, 2024, and 3.14 should be read aloud naturally.
She said: "I'll be there at 5 p.m.!" He replied, "Don't be late; we're leaving right after."
Good morning! Good afternoon! Good evening! Good night! See you tomorrow.
你好，今天天气很好。我们一起去公园散步吧。
こんにちは、今日はいい天気ですね。
안녕하세요, 만나서 반갑습니다.
Guten Tag, wie geht es Ihnen heute? Danke, sehr gut.
Bonjour, comment allez-vous aujourd'hui ? Très bien, merci.
Привет, как дела? Всё хорошо, спасибо.
Olá, como você está hoje? Estou bem, obrigado.
Hola, ¿cómo estás hoy? Estoy bien, gracias.
Ciao, come stai oggi? Sto bene, grazie.
"""
_ROLE_LINES = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
)


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def build_random_model_dir(
    path: str | os.PathLike, preset: Preset = "tiny", seed: int = 0, never_eos: bool = False, greedy: bool = False
) -> Path:
    """Write a complete random Qwen3-TTS-12Hz Base model directory at ``path`` and return it.

    Loads with ``qwen_tts.Qwen3TTSModel.from_pretrained(path, device_map="cpu", dtype=torch.float32)`` offline.
    ``never_eos`` makes the talker never emit codec EOS (runaway-guard tests). ``greedy`` writes a generation config
    without sampling (talker and sub-talker), so every caller that leaves the sampling options alone (the server, a
    pipeline) gets deterministic audio. Same weights either way. Files are written to a temporary
    sibling directory and moved into place, so an interrupted build never leaves a half-written model behind.
    """
    if preset not in ("tiny", "full"):
        raise ValueError(f"preset must be 'tiny' or 'full', not {preset!r}")
    from processors.compat import ensure_qwen_tts_importable

    ensure_qwen_tts_importable()
    import torch

    target = Path(path)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".qwen3tts-build-", dir=target.parent))
    os.chmod(work, 0o755)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the calibration passes below then give the same floats on every run
    try:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(str(work))
        ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
            ("im_start_token_id", "<|im_start|>"), ("im_end_token_id", "<|im_end|>"),
            ("tts_pad_token_id", "<tts_pad>"), ("tts_bos_token_id", "<tts_text_bos>"),
            ("tts_eos_token_id", "<tts_text_eod>"), ("assistant_token_id", "assistant"),
        )}  # fmt: skip
        config = model_config(preset, ids, text_vocab_size=len(tokenizer))
        codec_config = speech_tokenizer_config(preset)
        dtype = torch.float32 if preset == "tiny" else torch.bfloat16  # the real checkpoint is bf16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _write_talker(work, config, never_eos, dtype)
            torch.manual_seed(seed + 1)
            _write_codec(work / "speech_tokenizer", codec_config)
        _write_json(work / "config.json", {**config, "dtype": str(dtype).removeprefix("torch.")})
        greedy_options = {"do_sample": False, "subtalker_dosample": False} if greedy else {}
        _write_json(work / "generation_config.json", {**GENERATION_CONFIG, **greedy_options})
        if target.exists():
            target.rmdir()
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return target


def cached_random_model_dir(cache: str | os.PathLike, preset: Preset, *, never_eos: bool = True) -> Path:
    """A random model directory under ``cache``, built on first use and reused (benchmarks and GPU checks share it:
    the full preset takes a while to build)."""
    path = Path(cache) / f"qwen3-tts-{preset}-random{'-noeos' if never_eos else ''}"
    if not (path / "config.json").exists():
        print(f"building a random {preset} Qwen3-TTS model in {path} ...", flush=True)
        build_random_model_dir(path, preset=preset, seed=0, never_eos=never_eos)
    return path


def default_cache_dir() -> Path:
    """Where benchmarks and GPU checks keep their models: ``$DUPLEX_CACHE_DIR/bench`` (``~/.cache/duplex/bench``)."""
    return Path(os.environ.get("DUPLEX_CACHE_DIR", Path.home() / ".cache" / "duplex")) / "bench"


def expected_frames(
    text_tokens: int,
    *,
    ref_text_tokens: int | None = None,
    ref_frames: int | None = None,
    language: bool = True,
    max_new_tokens: int | None = None,
) -> int:
    """Frames a (not ``never_eos``) random model generates for one utterance, greedy or sampled.

    Replays the stop rule over upstream's streaming prompt (``non_streaming_mode=False``, the default):
    ``text_tokens`` = tokens of the text to speak; for ICL pass the reference transcript's tokens and the reference's
    codec frames (``ref_code.shape[0]``); ``language=False`` for ``"Auto"``. With ``max_new_tokens`` the result is
    capped like upstream (which returns at most ``max_new_tokens - 1`` frames).
    """
    pads, texts = (5 if language else 4), 4  # role (3) + <tts_text_bos> are text; the codec prefix rides on pads
    if ref_text_tokens is None:
        texts += 1  # first text token, with codec BOS
        trailing = text_tokens  # the rest of the text, then <tts_text_eod>
    else:
        if ref_frames is None:
            raise ValueError("ICL needs ref_frames")
        text_lens, codec_lens = ref_text_tokens + text_tokens + 1, ref_frames + 1
        texts += min(text_lens, codec_lens)
        pads += max(0, codec_lens - text_lens)
        trailing = max(0, text_lens - codec_lens)
    k = 0
    while True:
        if k < trailing:
            texts += 1
        else:
            pads += 1
        # feature sum: +1 per pad, -1.5 per text position, +0.25 for <tts_text_bos>; min_new_tokens=2 hides step 0
        if k >= 1 and pads - PADS_PER_TEXT_TOKEN * texts + _BOS_OFFSET > 0:
            frames = k + 1
            break
        k += 1
    if max_new_tokens is not None:
        frames = min(frames, max_new_tokens - 1)
    return frames


def make_reference_audio(seconds: float = 4.0, sample_rate: int = TTS_SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A deterministic voiced-speech-like float32 signal for voice-prompt tests.

    Syllables (~4 per second) of a gliding, slightly vibrato harmonic tone (f0 ~ 100-220 Hz) shaped by two moving
    formant peaks, with raised-cosine envelopes, short pauses and a little breath noise; peak 0.5.
    """
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError("seconds and sample_rate must be positive")
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    base_f0 = rng.uniform(100.0, 180.0)
    pos = int(rng.uniform(0.05, 0.15) * sample_rate)
    while pos < n:
        length = int(rng.uniform(0.12, 0.28) * sample_rate)
        seg = slice(pos, min(n, pos + length))
        m = seg.stop - seg.start
        if m <= 8:
            break
        tt = t[seg] - t[pos]
        f0 = base_f0 * (1.0 + 0.25 * rng.uniform(-1, 1) + 0.15 * rng.uniform(-1, 1) * tt / max(tt[-1], 1e-6))
        f0 = f0 * (1.0 + 0.01 * np.sin(2 * np.pi * 5.5 * tt))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        f1, f2 = rng.uniform(300, 900), rng.uniform(900, 2500)
        voiced = np.zeros(m)
        for k in range(1, int(4000 // base_f0)):
            fk = k * float(np.mean(f0))
            gain = 1.0 / k + 1.5 * np.exp(-(((fk - f1) / 120.0) ** 2)) + 0.8 * np.exp(-(((fk - f2) / 200.0) ** 2))
            voiced += gain * np.sin(k * phase)
        env = np.sin(np.pi * np.arange(m) / m) ** 2
        out[seg] += env * voiced + 0.05 * env * rng.standard_normal(m)
        pos += length + int(rng.uniform(0.02, 0.12) * sample_rate)
    peak = np.max(np.abs(out))
    if peak > 0:
        out *= 0.5 / peak
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


def model_config(preset: Preset, token_ids: dict[str, int], text_vocab_size: int) -> dict[str, Any]:
    """The top-level ``config.json`` dict (Base model, 12 Hz tokenizer) for ``preset``."""
    talker = dict(FULL_TALKER if preset == "full" else TINY_TALKER)
    predictor = dict(FULL_CODE_PREDICTOR if preset == "full" else TINY_CODE_PREDICTOR)
    speaker = dict(FULL_SPEAKER_ENCODER if preset == "full" else TINY_SPEAKER_ENCODER)
    if preset == "tiny":
        talker["text_vocab_size"] = text_vocab_size
    elif text_vocab_size > talker["text_vocab_size"]:
        raise ValueError("tokenizer larger than the real text vocabulary")
    common = dict(hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False, attention_dropout=0.0,
                  initializer_range=0.02, use_cache=True, use_sliding_window=False)  # fmt: skip
    talker.update(common)
    talker.update(CODEC_IDS)
    talker.update(
        model_type="qwen3_tts_talker", vocab_size=CODEC_VOCAB_SIZE, num_code_groups=NUM_CODE_GROUPS,
        codec_language_id=dict(LANGUAGE_IDS), spk_id={}, spk_is_dialect={},
        code_predictor_config={**predictor, **common, "model_type": "qwen3_tts_talker_code_predictor",
                               "vocab_size": CODEBOOK_SIZE, "num_code_groups": NUM_CODE_GROUPS},
    )  # fmt: skip
    return dict(
        architectures=["Qwen3TTSForConditionalGeneration"], model_type="qwen3_tts",
        tokenizer_type="qwen3_tts_tokenizer_12hz", tts_model_size="0b6", tts_model_type="base",
        **token_ids, talker_config=talker, speaker_encoder_config={**speaker, "sample_rate": TTS_SAMPLE_RATE},
    )  # fmt: skip


def speech_tokenizer_config(preset: Preset) -> dict[str, Any]:
    """``speech_tokenizer/config.json`` for ``preset`` (the codec keeps 16 codebooks and 1920 samples per frame)."""
    encoder = dict(FULL_CODEC_ENCODER if preset == "full" else TINY_CODEC_ENCODER)
    decoder = dict(FULL_CODEC_DECODER if preset == "full" else TINY_CODEC_DECODER)
    return dict(
        architectures=["Qwen3TTSTokenizerV2Model"], model_type="qwen3_tts_tokenizer_12hz",
        encoder_valid_num_quantizers=NUM_CODE_GROUPS, input_sample_rate=TTS_SAMPLE_RATE,
        output_sample_rate=TTS_SAMPLE_RATE, decode_upsample_rate=CODEC_FRAME_SAMPLES,
        encode_downsample_rate=CODEC_FRAME_SAMPLES, encoder_config=encoder, decoder_config=decoder,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------


def build_tokenizer():
    """A deterministic byte-level BPE in Qwen2's format (``Qwen2TokenizerFast``), trained offline on ``_CORPUS``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import processors as tk_processors
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = tk_processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # role words appear in every prompt: repeat them so they become single tokens, as in Qwen's vocabulary
    lines = _CORPUS.splitlines() + [_ROLE_LINES] * 20
    tok.train_from_iterator(lines, trainer=trainer)
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=131072,
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    for word in ("<|im_start|>", "assistant", "\n", "<|im_end|>"):
        if len(fast.encode(word, add_special_tokens=False)) != 1:  # pragma: no cover - corpus regression
            raise RuntimeError(f"{word!r} is not a single token; upstream's prompt slicing needs it to be")
    return fast


# --------------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------------


def _round(x: float) -> float:
    """Three significant digits: calibration scales then do not depend on the last bits of a float reduction."""
    return float(f"{x:.3g}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def _save_safetensors(module, path: Path, dtype=None) -> None:
    from safetensors.torch import save_file

    state = {}
    for k, v in module.state_dict().items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous().clone()
    save_file(state, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)


def _write_talker(out: Path, config: dict[str, Any], never_eos: bool, dtype) -> None:
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**config)).eval()
    tts_pad_id, tts_bos_id = config["tts_pad_token_id"], config["tts_bos_token_id"]
    _install_stop_circuit(model, tts_pad_id, tts_bos_id, never_eos)
    _calibrate_codec_head(model)
    _save_safetensors(model, out / "model.safetensors", dtype=dtype)
    del model


def _write_codec(out: Path, config: dict[str, Any]) -> None:
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from transformers import EncodecFeatureExtractor

    out.mkdir()
    codec = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**config)).eval()
    _init_codec(codec)
    _save_safetensors(codec, out / "model.safetensors")
    _write_json(out / "config.json", config)
    EncodecFeatureExtractor(
        feature_size=1, sampling_rate=TTS_SAMPLE_RATE, padding_value=0.0, return_attention_mask=True
    ).save_pretrained(str(out))
    del codec


def _install_stop_circuit(model, tts_pad_id: int, tts_bos_id: int, never_eos: bool) -> None:
    """Reserve control dimensions in the talker and wire the EOS rule described in the module docstring."""
    import torch

    talker = model.talker
    cfg = talker.config
    hidden = cfg.hidden_size
    big = _BIG * math.sqrt(hidden)  # dominates the layer-0 RMS, which is then ~_BIG at every position
    unit = 64.0  # detector pre-activation: silu(64) == 64 exactly
    with torch.no_grad():
        # 1. Nothing random writes into the control dimensions ...
        talker.model.codec_embedding.weight[:, _CONTROL] = 0
        for emb in talker.code_predictor.model.codec_embedding:
            emb.weight[:, _CONTROL] = 0
        fc = model.speaker_encoder.fc
        fc.weight[_CONTROL] = 0
        fc.bias[_CONTROL] = 0
        # ... and nothing random reads them (so the content path is an ordinary random transformer).
        for layer in list(talker.model.layers) + list(talker.code_predictor.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                lin.weight[:, _CONTROL] = 0
            attn.o_proj.weight[_CONTROL] = 0
            mlp.down_proj.weight[_CONTROL] = 0
        for head in talker.code_predictor.lm_head:
            head.weight[:, _CONTROL] = 0
        proj = talker.code_predictor.small_to_mtp_projection
        if isinstance(proj, torch.nn.Linear):
            proj.weight[:, _CONTROL] = 0

        # 2. Text side: _C_ONE = big everywhere; _C_FEAT = +1 for <tts_pad>, -1.25 for <tts_text_bos>, -1.5 otherwise.
        text_emb = talker.model.text_embedding.weight
        fc1, fc2 = talker.text_projection.linear_fc1, talker.text_projection.linear_fc2
        fc2.weight[_CONTROL] = 0
        fc2.bias[_CONTROL] = 0
        fc2.bias[_C_ONE] = big
        fc2.bias[_C_FEAT] = -PADS_PER_TEXT_TOKEN
        for dim, unit_idx, token, value in ((_T_PAD, _U_PAD, tts_pad_id, 1.0 + PADS_PER_TEXT_TOKEN),
                                            (_T_BOS, _U_BOS, tts_bos_id, _BOS_OFFSET)):  # fmt: skip
            text_emb[:, dim] = 0
            text_emb[token, dim] = 1.0
            fc1.weight[:, dim] = 0
            fc1.weight[unit_idx] = 0
            fc1.weight[unit_idx, dim] = unit
            fc1.bias[unit_idx] = 0
            fc2.weight[:, unit_idx] = 0
            fc2.weight[_C_FEAT, unit_idx] = value / unit

        # 3. Layer 0, kv head 0 and its query group: zero query -> uniform attention -> running mean of _C_FEAT.
        attn = talker.model.layers[0].self_attn
        head_dim = attn.head_dim
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        attn.q_proj.weight[: group * head_dim] = 0
        attn.k_proj.weight[:head_dim] = 0
        attn.v_proj.weight[:head_dim] = 0
        attn.v_proj.weight[0, _C_FEAT] = _BIG  # undo the layer-0 RMS normalisation
        attn.o_proj.weight[:, : group * head_dim] = 0
        attn.o_proj.weight[_C_CNT, 0] = 1.0

        # 4. Codec head: codes read only content; EOS reads the running mean (or a large negative constant).
        head = talker.codec_head.weight
        head[:, _CONTROL] = 0
        eos = cfg.codec_eos_token_id
        head[eos] = 0
        if never_eos:
            head[eos, _C_ONE] = -1.0e4 / math.sqrt(hidden)  # h[_C_ONE] ~ sqrt(hidden) after the final norm
        else:
            head[eos, _C_CNT] = _EOS_GAIN


def _calibrate_codec_head(model) -> None:
    """Scale the content rows of the codec head so codebook-0 logits spread by ~``_CONTENT_LOGIT_STD``.

    Measured on the talker's own output for a fixed pseudo-prompt (random codec and text ids), so the scale is right
    for any preset; deterministic because the inputs come from a fixed generator.
    """
    import torch

    talker = model.talker
    cfg = talker.config
    gen = torch.Generator().manual_seed(1234)
    n = 48
    codes = torch.randint(0, CODEBOOK_SIZE, (1, n), generator=gen)
    text = torch.randint(0, cfg.text_vocab_size, (1, n), generator=gen)
    with torch.no_grad():
        embeds = talker.get_input_embeddings()(codes) + talker.text_projection(talker.get_text_embeddings()(text))
        hidden = talker.model(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, n, dtype=torch.long),
            position_ids=torch.arange(n).view(1, 1, n).expand(3, 1, n),
            use_cache=False,
        )
        h = hidden.last_hidden_state[0]
        head = talker.codec_head.weight
        eos = cfg.codec_eos_token_id
        rows = torch.ones(head.shape[0], dtype=torch.bool)
        rows[eos] = False
        std = float((h @ head[rows].T).std())
        if std > 0:
            head[rows] *= _round(_CONTENT_LOGIT_STD / std)


def _init_codec(codec) -> None:
    """Give the codec audible-scale output and varied codes (HF's default init makes the decoder output ~1e-9 and
    every encoder codebook zero, i.e. one code for everything)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(4321)
    decoder = codec.decoder
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
                fan_in = (
                    module.weight[0].numel()
                    if not isinstance(module, nn.ConvTranspose1d)
                    else (module.weight.shape[0] * module.weight.shape[2] // max(module.stride[0], 1))
                )
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.zero_()
        for name, param in decoder.named_parameters():
            if name.endswith("embedding_sum"):
                param.copy_(torch.randn(param.shape, generator=gen))
            elif name.endswith("cluster_usage"):
                param.fill_(1.0)
        # last conv: zero DC gain (no offset), then scale so random codes give RMS ~0.1 (before the [-1, 1] clamp)
        last = decoder.decoder[-1].conv
        last.weight -= last.weight.mean(dim=-1, keepdim=True)
        last.weight *= 1e-4
        codes = torch.randint(0, CODEBOOK_SIZE, (1, NUM_CODE_GROUPS, 24), generator=gen)
        rms = float(decoder(codes).pow(2).mean().sqrt())
        if rms > 0:
            last.weight *= _round(0.1 / rms)

        # encoder codebooks: random centroids at the scale of the encoder's projected features
        encoder = codec.encoder
        wav = torch.from_numpy(make_reference_audio(3.0, TTS_SAMPLE_RATE, seed=7)).view(1, 1, -1)
        emb = encoder.encoder(wav)
        emb = encoder.encoder_transformer(emb.transpose(1, 2)).last_hidden_state.transpose(1, 2)
        emb = encoder.downsample(emb)
        for rvq in (encoder.quantizer.semantic_residual_vector_quantizer,
                    encoder.quantizer.acoustic_residual_vector_quantizer):  # fmt: skip
            x = rvq.input_proj(emb) if rvq.input_proj is not None else emb
            scale = _round(float(x.std())) or 1.0
            for layer in rvq.layers:
                book = layer.codebook
                book.embed_sum.copy_(torch.randn(book.embed_sum.shape, generator=gen) * scale)
                book.cluster_usage.fill_(1.0)
                book._embed = None
                x = x - layer.decode(layer.encode(x))
