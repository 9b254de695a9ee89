"""CMU PocketSphinx (the ``pocketsphinx`` wheel's bundled en-us model) as a WEAK fallback STT engine.

It exists so Duplex transcribes something with no model download at all. Expect 3-13 % WER on clean read speech,
far worse with noise, telephone audio or unusual voices, and mangled numbers (general English LM). English only.
Use Parakeet whenever you can.

One decoder per process, one channel state per session: the Decoder carries its cepstral mean (channel
normalisation) from one utterance to the next, so one caller's channel would colour another's results. A server
loads one ``PocketsphinxEngine`` (its acoustic model, LM and dictionary: ~60 MB of C memory) and gives each voice
session ``engine.session()``, a view that keeps that session's own cepstral mean and puts it back into the shared
decoder when another caller used it in between. A session's first utterance decodes exactly as on a new decoder;
later ones start from the session's own mean (only the running mean's weighting restarts at such a switch: same
words as a decoder of its own on the test clips, word times within 20 ms). A view costs nothing, where a decoder per
session cost 8-90 MB each that the C allocator did not give back when the session ended.
Thread-safety: calls are serialised by a lock (a Decoder is not re-entrant; decoding holds the GIL anyway, so
separate decoders would not run in parallel either).

Exact digital silence (zeros: padding, muted mics, the adapter's trailing silence) upsets it: 2 s of zeros decode as
"dog", and zeros cost search time. So an all-zero input is answered with an empty transcript at once, exact zeros
at the edges are trimmed to 0.2 s, and remaining runs of zeros get -60 dBFS noise. Measured on 45 flite utterances
(-29 dBFS speech, 1 s of zeros before, 0.5 s after, one decoder): no treatment 8.4 % WER at RTF 0.23; dither alone
8.4 % at RTF 0.32; trim + dither (default) 8.4 % at RTF 0.23; trim alone 9.8 %; dither at -50 dBFS (a level suggested
elsewhere) 13-18 %, too loud next to quiet speech. On the six committed fixtures band-limited to 8 kHz
(telephone) the edge trimming matters most: 18 % WER with it, 51-54 % without.
"""

from __future__ import annotations

import re
import threading

import numpy as np
from loguru import logger

from processors.audio import STT_DITHER_DBFS, STT_DITHER_MIN_RUN_SECONDS, STT_SAMPLE_RATE, float_to_pcm16
from processors.stt_engine import Stopwatch, STTError, Transcript, Word, validate_audio

_FILLERS = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")  # silence and noise tokens, not words
_ALT_PRONUNCIATION = re.compile(r"\(\d+\)$")  # "read(2)" -> "read"


def dither_digital_silence(
    audio: np.ndarray,
    dbfs: float = STT_DITHER_DBFS,
    min_run_seconds: float = STT_DITHER_MIN_RUN_SECONDS,
    seed: int = 0,
) -> np.ndarray:
    """``audio`` with Gaussian noise of ``dbfs`` RMS written into every run of exact zeros of at least
    ``min_run_seconds`` (isolated zero samples are zero crossings inside speech and stay). Deterministic per seed."""
    zero = audio == 0.0
    if not zero.any():
        return audio
    edges = np.diff(np.concatenate(([0], zero.view(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = (ends - starts) >= max(1, int(min_run_seconds * STT_SAMPLE_RATE))
    if not keep.any():
        return audio
    out = audio.copy()
    rng = np.random.default_rng(seed)
    rms = 10.0 ** (dbfs / 20.0)
    for s, e in zip(starts[keep], ends[keep]):
        out[s:e] = rng.normal(0.0, rms, e - s)
    return out


class PocketsphinxEngine:
    """PocketSphinx en-us decoder (see module docstring: weak fallback; ``session()`` for each caller)."""

    name = "pocketsphinx"
    language = "en"
    holds_gil = True  # decoding blocks other Python threads: callers avoid extra (interim) passes
    # Speech end -> final transcript P99 in a pipeline: VAD stop_secs 0.2 + one pass over utterance and padding at
    # RTF 0.13-0.5 (measured; the higher end with the shared CPU busy) + a queued interim pass.
    ttfs_p99_s = 1.0

    def __init__(
        self,
        *,
        dither_dbfs: float | None = STT_DITHER_DBFS,
        edge_silence_s: float | None = 0.2,
        **decoder_options,
    ):
        """``decoder_options`` go to ``pocketsphinx.Decoder`` (e.g. ``lm=``, ``dict=``, ``hmm=``); by default the
        wheel's en-us acoustic model, LM and dictionary. ``dither_dbfs=None`` turns the silence dither off;
        ``edge_silence_s``: exact zeros kept before the first and after the last non-zero sample (None: all)."""
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise STTError(f"pocketsphinx is not installed ({e}); pip install pocketsphinx") from e
        options = {"loglevel": "FATAL", "samprate": STT_SAMPLE_RATE, **decoder_options}
        with Stopwatch() as sw:
            try:
                self._decoder = Decoder(**options)
            except Exception as e:  # bad model paths raise RuntimeError/ValueError from the C library
                raise STTError(f"could not create the pocketsphinx decoder: {type(e).__name__}: {e}") from e
        self._frame_seconds = 1.0 / float(self._decoder.config["frate"])
        self.dither_dbfs = dither_dbfs
        self.edge_silence_s = edge_silence_s
        self._lock = threading.Lock()
        self._initial_cmn: str = self._decoder.get_cmn(False)
        self._loaded_cmn = self._initial_cmn  # the cepstral mean the decoder holds now
        self._own = _Channel(self._initial_cmn)  # the state of calls made on the engine itself
        logger.debug(f"pocketsphinx: decoder ready in {sw.seconds:.2f} s (weak fallback STT)")

    def session(self) -> PocketsphinxSession:
        """An engine for one caller (a voice session) on this decoder, starting from the model's initial cepstral
        mean, as a new decoder would."""
        return PocketsphinxSession(self)

    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        """Transcribe one utterance (float32 mono 16 kHz). Blocks; serialised with other callers."""
        return self._transcribe(audio, sample_rate, self._own)

    def _transcribe(self, audio: np.ndarray, sample_rate: int, channel: _Channel) -> Transcript:
        audio = validate_audio(audio, sample_rate)
        seconds = audio.size / STT_SAMPLE_RATE
        audible = np.flatnonzero(audio)
        if audible.size == 0:  # empty or all digital silence: nothing to hear (decoding zeros gave "dog")
            return Transcript(text="", language=self.language, audio_seconds=seconds, compute_seconds=0.0)
        keep = audio.size if self.edge_silence_s is None else int(self.edge_silence_s * STT_SAMPLE_RATE)
        lo, hi = max(0, int(audible[0]) - keep), min(audio.size, int(audible[-1]) + 1 + keep)
        audio, offset = audio[lo:hi], lo / STT_SAMPLE_RATE  # edge zeros cost search time and carry nothing
        if self.dither_dbfs is not None:
            audio = dither_digital_silence(audio, self.dither_dbfs)
        pcm = float_to_pcm16(audio)
        with self._lock, Stopwatch() as sw:
            try:
                d = self._decoder
                if channel.cmn != self._loaded_cmn:  # another caller's state is loaded: put this caller's back
                    d.reinit_feat()
                    d.set_cmn(channel.cmn)
                d.start_utt()
                d.process_raw(pcm, no_search=False, full_utt=True)
                d.end_utt()
                hyp = d.hyp()
                segments = [(s.word, s.start_frame, s.end_frame) for s in d.seg()] if hyp is not None else []
                channel.cmn = self._loaded_cmn = d.get_cmn(False)
            except Exception as e:
                self._loaded_cmn = ""  # unknown after a failure: the next call sets its own
                raise STTError(f"pocketsphinx decoding failed: {type(e).__name__}: {e}") from e
        words = []
        for token, sf, ef in segments:
            if _FILLERS.match(token):
                continue
            word = _ALT_PRONUNCIATION.sub("", token)
            start, end = offset + sf * self._frame_seconds, offset + (ef + 1) * self._frame_seconds
            words.append(Word(word, min(start, seconds), min(end, seconds)))
        text = " ".join(w.word for w in words) if words else (hyp.hypstr.strip() if hyp is not None else "")
        return Transcript(
            text=text, words=tuple(words), language=self.language, audio_seconds=seconds, compute_seconds=sw.seconds
        )


class _Channel:
    """One caller's cepstral mean, as the comma-separated text pocketsphinx reads and writes."""

    __slots__ = ("cmn",)

    def __init__(self, cmn: str):
        self.cmn = cmn


class PocketsphinxSession:
    """One voice session's pocketsphinx engine: the process's decoder with this session's own channel state."""

    name = PocketsphinxEngine.name
    language = PocketsphinxEngine.language
    holds_gil = PocketsphinxEngine.holds_gil
    ttfs_p99_s = PocketsphinxEngine.ttfs_p99_s

    def __init__(self, engine: PocketsphinxEngine):
        self.engine = engine
        self._channel = _Channel(engine._initial_cmn)

    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        """As ``PocketsphinxEngine.transcribe``, with this session's channel normalisation."""
        return self.engine._transcribe(audio, sample_rate, self._channel)
