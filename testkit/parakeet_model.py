"""A Parakeet-shaped ``.nemo`` with random weights, built fully offline with NeMo's own classes.

Why: the real parakeet-tdt-0.6b-v2 is a 2.5 GB download from Hugging Face; tests and offline CI need the same code
path (``EncDecRNNTBPEModel``: FastConformer encoder, RNNT prediction net, TDT joint, SentencePiece tokenizer,
``save_to``/``restore_from``/``transcribe``) without it. Its output is meaningless text or nothing.

``PARAKEET_TDT_V2_SIZES`` holds the real architecture sizes, so ``build_parakeet_like_model(**PARAKEET_TDT_V2_SIZES)``
instantiates a full-size random model for timing (never used in unit tests: ~620M parameters).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

from processors.audio import STT_SAMPLE_RATE

TINY_SIZES: dict[str, Any] = dict(
    vocab_size=64, d_model=64, n_layers=2, n_heads=2, subsampling_conv_channels=32,
    pred_hidden=64, pred_rnn_layers=1, joint_hidden=64, features=80,
)  # fmt: skip

# nvidia/parakeet-tdt-0.6b-v2 (model card + config): 24 FastConformer layers, d_model 1024, 8 heads, 8x dw_striding
# (256 channels), 128 mel features, 2x640 LSTM prediction net, 640 joint, 5 TDT durations, SentencePiece 1024.
PARAKEET_TDT_V2_SIZES: dict[str, Any] = dict(
    vocab_size=1024, d_model=1024, n_layers=24, n_heads=8, subsampling_conv_channels=256,
    pred_hidden=640, pred_rnn_layers=2, joint_hidden=640, features=128,
)  # fmt: skip

TDT_DURATIONS = [0, 1, 2, 3, 4]

# Varied English so the BPE merges look like English sub-words; nothing depends on the exact text.
_CORPUS = """\
hello how are you today
what is the weather like in paris this morning
please tell me a short story about a cat and a dog
the quick brown fox jumps over the lazy dog
can you book a table for two at seven o'clock
i would like to order a large pizza with mushrooms
turn off the lights in the kitchen and the living room
where is the nearest train station from here
thank you very much that was really helpful
my name is anna and i live in a small town near the sea
could you repeat that a little more slowly please
set an alarm for six thirty tomorrow morning
the meeting has been moved to thursday afternoon
how many people live in the city of london
play some quiet music while i am reading
remind me to call my mother on sunday evening
what time does the shop close on saturday
the children were playing in the garden all day long
she sells sea shells by the sea shore
we need milk bread eggs butter cheese and apples
"""


def _train_tokenizer(out_dir: Path, vocab_size: int) -> Path:
    """SentencePiece BPE trained on the local corpus, plus the ``vocab.txt`` NeMo's BPE mixin requires."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    text = _CORPUS * 20
    if vocab_size > 64:  # the sentences support ~100 merges; pseudo-words give BPE enough to reach real sizes
        rng = random.Random(vocab_size)
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        weights = [26 - i for i in range(26)]
        lines = (
            " ".join("".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(12))
            for _ in range(vocab_size * 4)
        )
        text += "\n".join(lines) + "\n"
    corpus.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        hard_vocab_limit=False,  # the tiny corpus may support fewer merges than asked for
        minloglevel=2,
        num_threads=1,
    )
    corpus.unlink()
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return out_dir


def _model_config(tokenizer_dir: Path, sizes: dict[str, Any]):
    from omegaconf import OmegaConf

    durations = list(TDT_DURATIONS)
    cfg = {
        "sample_rate": STT_SAMPLE_RATE,
        "compute_eval_loss": False,
        "log_prediction": False,
        "model_defaults": {
            "enc_hidden": sizes["d_model"],
            "pred_hidden": sizes["pred_hidden"],
            "joint_hidden": sizes["joint_hidden"],
        },
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": STT_SAMPLE_RATE,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": sizes["features"],
            "n_fft": 512,
            "frame_splicing": 1,
            "dither": 0.0,  # deterministic features (inference only)
            "pad_to": 0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": sizes["features"],
            "feat_out": -1,
            "n_layers": sizes["n_layers"],
            "d_model": sizes["d_model"],
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": sizes["subsampling_conv_channels"],
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": sizes["n_heads"],
            "att_context_size": [-1, -1],
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "batch_norm",
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {
                "pred_hidden": sizes["pred_hidden"],
                "pred_rnn_layers": sizes["pred_rnn_layers"],
                "t_max": None,
                "dropout": 0.2,
            },
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "jointnet": {"joint_hidden": sizes["joint_hidden"], "activation": "relu", "dropout": 0.2},
            "num_extra_outputs": len(durations),
        },
        "decoding": {
            "strategy": "greedy_batch",
            "model_type": "tdt",
            "durations": durations,
            "greedy": {"max_symbols": 10},
        },
        "loss": {"loss_name": "tdt", "tdt_kwargs": {"durations": durations, "sigma": 0.02, "omega": 0.1}},
        "optim": None,
        # No train/validation/test data: NeMo then skips building data loaders.
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
    }
    return OmegaConf.create(cfg)


def build_parakeet_like_model(seed: int = 0, tokenizer_dir: str | Path | None = None, **sizes: Any):
    """An in-memory random ``EncDecRNNTBPEModel`` (eval mode, CPU) with the given sizes (default: tiny).

    ``tokenizer_dir`` must outlive the model until it is saved (NeMo reads the tokenizer files at save time);
    when None a temporary directory is made and kept on ``model._duplex_tokenizer_tmp``.
    """
    import torch

    from processors.compat import ensure_nemo_importable

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; never wait on it
    ensure_nemo_importable()
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    merged = {**TINY_SIZES, **sizes}
    tmp = None
    if tokenizer_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="duplex-spm-")
        tokenizer_dir = tmp.name
    tok = _train_tokenizer(Path(tokenizer_dir), merged["vocab_size"])
    torch.manual_seed(seed)
    model = EncDecRNNTBPEModel(cfg=_model_config(tok, merged), trainer=None)
    model.eval()
    model._duplex_tokenizer_tmp = tmp  # keep the files alive as long as the model
    return model


def build_tiny_parakeet_nemo(path: str | Path, seed: int = 0) -> Path:
    """Build and ``save_to`` a tiny random Parakeet-TDT ``.nemo`` at ``path`` (a few hundred kB, ~1 s after import)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="duplex-spm-") as tok_dir:
        model = build_parakeet_like_model(seed=seed, tokenizer_dir=tok_dir)
        model.save_to(str(path))
    return path
