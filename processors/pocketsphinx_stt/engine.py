"""CMU PocketSphinx (the ``pocketsphinx`` wheel's bundled en-us model) as a WEAK fallback STT engine.

It exists so Duplex transcribes something with no model download at all. Expect 3-13 % WER on clean read speech,
far worse with noise, telephone audio or unusual voices, and mangled numbers (general English LM). English only.
Use Parakeet whenever you can.

One engine per process, one channel state per session: the Decoder carries its cepstral mean (channel
normalisation) from one utterance to the next, so one caller's channel would colour another's results. A server
loads one ``PocketsphinxEngine`` and gives each voice session ``engine.session()``, a view that keeps that session's
own cepstral mean and puts it into the decoder it is given for each utterance. A session's first utterance decodes
exactly as on a new decoder; later ones start from the session's own mean (only the running mean's weighting
restarts at such a switch: same words as a decoder of its own on the test clips, word times within 20 ms).
Decoders (each holds the acoustic model, LM and dictionary: ~60 MB of C memory) live in a pool: an utterance takes
one for as long as it decodes and gives it back, so the process holds as many as utterances were ever decoded at
the same moment, and creating and destroying one per session (8-90 MB each that the C allocator did not give back)
never happens. ``open_stream`` decodes one utterance as it is spoken (``start_utt``, ``process_raw`` per piece,
``end_utt``): a hypothesis after every piece for the cost of decoding that piece, and the final transcript at the end
for the cost of the last one; the stream holds its decoder until it finishes. Thread-safe: a decoder is used by one
utterance at a time (decoding holds the GIL, so utterances of different sessions take turns at the CPU anyway).

Exact digital silence (zeros: padding, muted mics, the adapter's trailing silence) upsets it: 2 s of zeros decode as
"dog", and zeros cost search time. So an all-zero input is answered with an empty transcript at once, exact zeros
at the edges are trimmed to 0.2 s, and remaining runs of zeros get -60 dBFS noise. Measured on 45 flite utterances
(-29 dBFS speech, 1 s of zeros before, 0.5 s after, one decoder): no treatment 8.4 % WER at RTF 0.23; dither alone
8.4 % at RTF 0.32; trim + dither (default) 8.4 % at RTF 0.23; trim alone 9.8 %; dither at -50 dBFS (a level suggested
elsewhere) 13-18 %, too loud next to quiet speech. On the six committed fixtures band-limited to 8 kHz
(telephone) the edge trimming matters most: 18 % WER with it, 51-54 % without.
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any

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
    """PocketSphinx en-us decoders (see module docstring: weak fallback; ``session()`` for each caller)."""

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
        self._decoder_cls = Decoder
        self._options = {"loglevel": "FATAL", "samprate": STT_SAMPLE_RATE, **decoder_options}
        self._pool_lock = threading.Lock()
        self._idle: list[_Decoder] = []
        self.decoders = 0  # decoders made so far (the most utterances decoded at one moment)
        with Stopwatch() as sw:
            first = self._new_decoder()  # bad model paths fail here, at load
        self._frame_seconds = 1.0 / float(first.decoder.config["frate"])
        self._initial_cmn: str = first.cmn
        self._idle.append(first)
        self._own = _Channel(self._initial_cmn)  # the state of calls made on the engine itself
        self.dither_dbfs = dither_dbfs
        self.edge_silence_s = edge_silence_s
        logger.debug(f"pocketsphinx: decoder ready in {sw.seconds:.2f} s (weak fallback STT)")

    def session(self) -> PocketsphinxSession:
        """An engine for one caller (a voice session) on this engine's decoders, starting from the model's initial
        cepstral mean, as a new decoder would."""
        return PocketsphinxSession(self)

    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        """Transcribe one utterance (float32 mono 16 kHz). Blocks; thread-safe."""
        return self._transcribe(audio, sample_rate, self._own)

    def open_stream(self, source_rate: int = STT_SAMPLE_RATE) -> PocketsphinxStream:
        """Decode one utterance as it comes (see the module docstring and ``PocketsphinxStream``)."""
        return PocketsphinxStream(self, self._own, source_rate=source_rate)

    # --- the decoder pool ------------------------------------------------------------------------------------------
    def _new_decoder(self) -> _Decoder:
        try:
            decoder = self._decoder_cls(**self._options)
        except Exception as e:  # bad model paths raise RuntimeError/ValueError from the C library
            raise STTError(f"could not create the pocketsphinx decoder: {type(e).__name__}: {e}") from e
        with self._pool_lock:
            self.decoders += 1
        return _Decoder(decoder, decoder.get_cmn(False))

    def _take(self, channel: _Channel) -> _Decoder:
        """An idle decoder (a new one when every decoder is busy) holding ``channel``'s cepstral mean."""
        with self._pool_lock:
            slot = self._idle.pop() if self._idle else None
        if slot is None:
            slot = self._new_decoder()
        if slot.cmn != channel.cmn:  # another caller's state is loaded: put this caller's in
            try:
                slot.decoder.reinit_feat()
                slot.decoder.set_cmn(channel.cmn)
            except Exception as e:
                self._give_back(slot, channel, ok=False)
                raise STTError(f"pocketsphinx could not load the caller's channel state: {e}") from e
            slot.cmn = channel.cmn
        return slot

    def _give_back(self, slot: _Decoder, channel: _Channel, *, ok: bool) -> None:
        """Return ``slot`` to the pool; after a decoded utterance the caller's channel keeps the updated mean."""
        if not ok:  # a failure may leave an utterance open, which the next start_utt would trip over
            with contextlib.suppress(Exception):
                slot.decoder.end_utt()
        try:
            slot.cmn = slot.decoder.get_cmn(False) if ok else ""  # unknown after a failure: the next user sets it
            if ok:
                channel.cmn = slot.cmn
        except Exception:
            slot.cmn = ""
        with self._pool_lock:
            self._idle.append(slot)

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
        slot = self._take(channel)
        ok = False
        with Stopwatch() as sw:
            try:
                d = slot.decoder
                d.start_utt()
                d.process_raw(pcm, no_search=False, full_utt=True)
                d.end_utt()
                hyp = d.hyp()
                segments = [(s.word, s.start_frame, s.end_frame) for s in d.seg()] if hyp is not None else []
                ok = True
            except Exception as e:
                raise STTError(f"pocketsphinx decoding failed: {type(e).__name__}: {e}") from e
            finally:
                self._give_back(slot, channel, ok=ok)
        return self._transcript(hyp, segments, offset, seconds, sw.seconds)

    def _transcript(self, hyp, segments, offset: float, seconds: float, compute: float) -> Transcript:
        words = []
        for token, sf, ef in segments:
            if _FILLERS.match(token):
                continue
            word = _ALT_PRONUNCIATION.sub("", token)
            start, end = offset + sf * self._frame_seconds, offset + (ef + 1) * self._frame_seconds
            words.append(Word(word, min(start, seconds), min(end, seconds)))
        text = " ".join(w.word for w in words) if words else (hyp.hypstr.strip() if hyp is not None else "")
        return Transcript(
            text=text, words=tuple(words), language=self.language, audio_seconds=seconds, compute_seconds=compute
        )


class PocketsphinxStream:
    """One utterance through one of the engine's decoders, piece by piece (``STTStream``), with a caller's channel
    state; it holds the decoder from its first decoded piece until ``finish`` or ``close``. As in ``transcribe``,
    exact zeros before the first sound are cut to ``edge_silence_s`` and other runs of zeros get the engine's dither.

    Wideband audio is decoded live: a hypothesis per piece, and the final costs the last piece. Audio captured at a
    lower rate (``source_rate`` below 16 kHz: a telephone call) is kept and decoded in one pass at the end, as
    ``transcribe`` does, without hypotheses on the way: live decoding normalises the channel as it goes, starting
    from wideband values, and on telephone audio that costs a lot (the flite clips band-limited to 8 kHz: 36-64 %
    WER live against 21 % in one pass, and a live pass leaves the decoder worse for a one-pass decode after it; on
    wideband audio 10-13 % both ways)."""

    def __init__(self, engine: PocketsphinxEngine, channel: _Channel, *, source_rate: int = STT_SAMPLE_RATE):
        self._engine = engine
        self._channel = channel
        self._slot: _Decoder | None = None  # taken from the pool when decoding starts
        self._decoded = False  # an utterance went through end_utt: the channel's mean moves on
        self._live = source_rate >= STT_SAMPLE_RATE
        self._open = True
        self._started = False  # the decoder's utterance is open (live decoding began)
        self._offset = 0.0  # seconds of leading zeros not kept
        self._heard = False  # a non-zero sample came
        self._lead = np.zeros(0, np.float32)  # the latest leading zeros (kept up to edge_silence_s)
        self._kept: list[np.ndarray] = []  # narrowband: what was fed (after the leading cut), for the one pass
        self._samples = 0
        self._compute = 0.0
        self._last_text: str | None = None

    def feed(self, audio: np.ndarray) -> Transcript | None:
        if not self._open:
            raise STTError("the pocketsphinx stream is closed")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not self._heard:
            audio = self._after_leading_zeros(audio)
        if audio.size == 0:
            return None
        if self._engine.dither_dbfs is not None:
            audio = dither_digital_silence(audio, self._engine.dither_dbfs, seed=self._samples)
        self._samples += audio.size
        if not self._live:
            self._kept.append(audio)
            return None
        d = self._decoder()
        with Stopwatch() as sw:
            try:
                if not self._started:
                    d.start_utt()
                    self._started = True
                d.process_raw(float_to_pcm16(audio), no_search=False, full_utt=False)
                hyp = d.hyp()
                segments = [(s.word, s.start_frame, s.end_frame) for s in d.seg()] if hyp is not None else []
            except Exception as e:
                self.close()
                raise STTError(f"pocketsphinx decoding failed: {type(e).__name__}: {e}") from e
        self._compute += sw.seconds
        transcript = self._engine._transcript(hyp, segments, self._offset, self._seconds(), self._compute)
        if transcript.text == self._last_text:
            return None
        self._last_text = transcript.text
        return transcript

    def finish(self) -> Transcript:
        if not self._open:
            raise STTError("the pocketsphinx stream is closed")
        try:
            with Stopwatch() as sw:
                if not self._started and not self._kept:  # nothing but digital silence came
                    return Transcript(text="", language=self._engine.language, audio_seconds=self._seconds())
                d = self._decoder()
                if not self._live:  # one pass, as transcribe does
                    d.start_utt()
                    self._started = True
                    d.process_raw(float_to_pcm16(np.concatenate(self._kept)), no_search=False, full_utt=True)
                d.end_utt()
                self._started = False
                self._decoded = True
                hyp = d.hyp()
                segments = [(s.word, s.start_frame, s.end_frame) for s in d.seg()] if hyp is not None else []
        except Exception as e:
            raise STTError(f"pocketsphinx decoding failed: {type(e).__name__}: {e}") from e
        finally:
            self._release()
        self._compute += sw.seconds
        return self._engine._transcript(hyp, segments, self._offset, self._seconds(), self._compute)

    def close(self) -> None:
        if not self._open:
            return
        try:
            if self._started and self._slot is not None:
                self._slot.decoder.end_utt()
        except Exception:
            pass
        finally:
            self._started = False
            self._release()

    def _after_leading_zeros(self, audio: np.ndarray) -> np.ndarray:
        """What to keep of ``audio`` while nothing but zeros came before: from the first sound on, with at most
        ``edge_silence_s`` of the zeros before it."""
        keep = self._engine.edge_silence_s
        if keep is None:
            self._heard = True
            return audio
        audible = np.flatnonzero(audio)
        lead = np.concatenate([self._lead, audio if audible.size == 0 else audio[: audible[0]]])
        cut = max(0, lead.size - int(keep * STT_SAMPLE_RATE))
        self._offset += cut / STT_SAMPLE_RATE
        if audible.size == 0:
            self._lead = lead[cut:]
            return np.zeros(0, np.float32)
        self._heard = True
        return np.concatenate([lead[cut:], audio[audible[0] :]])

    def _seconds(self) -> float:
        return self._offset + self._samples / STT_SAMPLE_RATE

    def _decoder(self) -> Any:
        if self._slot is None:
            self._slot = self._engine._take(self._channel)
        return self._slot.decoder

    def _release(self) -> None:
        if self._open:
            self._open = False
            if self._slot is not None:
                slot, self._slot = self._slot, None
                self._engine._give_back(slot, self._channel, ok=self._decoded)


class _Decoder:
    """A pooled ``pocketsphinx.Decoder`` and the cepstral mean it holds now (comma-separated text)."""

    __slots__ = ("decoder", "cmn")

    def __init__(self, decoder: Any, cmn: str):
        self.decoder, self.cmn = decoder, cmn


class _Channel:
    """One caller's cepstral mean, as the comma-separated text pocketsphinx reads and writes."""

    __slots__ = ("cmn",)

    def __init__(self, cmn: str):
        self.cmn = cmn


class PocketsphinxSession:
    """One voice session's pocketsphinx engine: the process's decoders with this session's own channel state."""

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

    def open_stream(self, source_rate: int = STT_SAMPLE_RATE) -> PocketsphinxStream:
        """As ``PocketsphinxEngine.open_stream``, with this session's channel normalisation."""
        return PocketsphinxStream(self.engine, self._channel, source_rate=source_rate)
