"""Audio constants and conversions: the one place every engine, adapter and server reads them from.

Rates and frame sizes are fixed by the models (Qwen3-TTS 12 Hz codec: 24 kHz, 1920 samples per 80 ms frame;
Parakeet and Silero: 16 kHz) and by the transports (20 ms frames; telephony 8 kHz mu-law).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

# --- model rates -------------------------------------------------------------------------------
TTS_SAMPLE_RATE = 24_000  # Qwen3-TTS output
CODEC_FRAME_SAMPLES = 1_920  # samples per 12.5 Hz codec frame at 24 kHz
CODEC_FRAME_MS = 80
ESPEAK_SAMPLE_RATE = 22_050  # libespeak-ng output
STT_SAMPLE_RATE = 16_000  # Parakeet, pocketsphinx, Silero VAD
VAD_SAMPLE_RATES = (8_000, 16_000)  # Silero accepts only these

# --- speech to text ------------------------------------------------------------------------------
STT_MAX_SEGMENT_SECONDS = 60.0  # longest audio one engine call takes; the adapter splits longer utterances
STT_MIN_CLIP_SECONDS = 1.0  # Parakeet/NeMo pads shorter clips to this (we pad with silence first, deterministically)
# Noise put into runs of exact digital silence for pocketsphinx: without it 2 s of zeros decode as "dog". Measured on
# 45 flite utterances (-29 dBFS speech, 1 s zeros before, 0.5 s after): none 8.4 % WER, -60 dBFS 8.4 %,
# -50 dBFS 13-18 %.
STT_DITHER_DBFS = -60.0
STT_DITHER_MIN_RUN_SECONDS = 0.01  # shorter zero runs are zero crossings inside speech, not silence

# --- transports ----------------------------------------------------------------------------------
TRANSPORT_FRAME_MS = 20  # input frames fed to the pipeline
TELEPHONY_SAMPLE_RATE = 8_000  # Twilio / Telnyx / Plivo media streams (mu-law)
REALTIME_PCM_SAMPLE_RATE = 24_000  # OpenAI Realtime "pcm16" / "audio/pcm" (its G.711 formats are 8 kHz)
PIPELINE_OUTPUT_RATES = (8_000, 16_000, 24_000, 48_000)  # output rates the TTS adapters serve
BROWSER_SAMPLE_RATE = 48_000

# --- the OpenAI speech API (/v1/audio/speech) -----------------------------------------------------
SPEECH_API_SAMPLE_RATE = 24_000  # every format; "pcm" is 24 kHz 16-bit mono by the API's definition
SPEECH_API_BIT_RATES = {"mp3": 64_000, "opus": 32_000, "aac": 64_000}  # mono speech
SPEECH_API_OGG_PAGE_MS = 60  # Ogg page length: how long Opus audio may wait in the muxer before it leaves
SPEECH_API_SPEEDS = (0.25, 4.0)  # the API's range for ``speed``

# --- voice references ------------------------------------------------------------------------------
REFERENCE_MIN_SECONDS = 3.0
REFERENCE_MAX_SECONDS = 30.0
REFERENCE_TAIL_SILENCE_SECONDS = 0.5  # appended before encoding: stops the last phoneme leaking into speech
MAX_AUDIO_BYTES = 20 * 1024 * 1024  # largest reference/upload we decode

# Stream resampling quality: soxr "HQ" holds back ~19 ms at 24k->8k where "VHQ" holds back 80 ms
# (measured; see docs/benchmarks.md). Quality is still far above telephony's band limit.
STREAM_RESAMPLE_QUALITY = "HQ"

AudioSource = Union[str, Path, bytes, bytearray, "tuple[np.ndarray, int]"]


class AudioError(ValueError):
    """Audio that cannot be used: undecodable, wrong length, wrong rate. The message says why."""


class AudioTooLongError(AudioError):
    """Audio longer than a decode's ``max_seconds``: found from the file's header before decoding (``seconds`` is
    its length), or while decoding, which stops there (``seconds`` is None: longer than the limit)."""

    def __init__(self, max_seconds: float, seconds: float | None = None):
        got = f"{seconds:.2f} s" if seconds is not None else f"more than {max_seconds:g} s"
        super().__init__(f"audio must be at most {max_seconds:g} s long, got {got}")
        self.max_seconds, self.seconds = max_seconds, seconds


def to_mono_float32(audio: np.ndarray) -> np.ndarray:
    """Any numeric array (samples,) or (samples, channels) or int PCM -> float32 mono in [-1, 1]."""
    a = np.asarray(audio)
    if a.ndim == 2:
        # soundfile gives (frames, channels); average the channels
        a = a.mean(axis=1) if a.shape[1] <= 8 else a.mean(axis=0)
    elif a.ndim != 1:
        raise AudioError(f"audio must be 1-D or 2-D, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max + 1)
    return np.ascontiguousarray(a, dtype=np.float32)


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes (clipped, rounded)."""
    a = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return np.round(a * 32767.0).astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    """little-endian int16 bytes -> float32 [-1, 1]."""
    if len(data) % 2:
        raise AudioError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole signal (not for streams: use StreamResampler there)."""
    audio = np.asarray(audio, dtype=np.float32)
    if src_rate == dst_rate or audio.size == 0:
        return audio
    import soxr

    return soxr.resample(audio, src_rate, dst_rate, quality="VHQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resamples a stream chunk by chunk with state carried across chunks, so seams do not click.

    Resampling each chunk on its own restarts the filter at every seam (an audible click);
    this keeps one soxr stream per utterance and flushes its tail at the end.
    """

    def __init__(self, src_rate: int, dst_rate: int, quality: str = STREAM_RESAMPLE_QUALITY):
        self.src_rate, self.dst_rate = int(src_rate), int(dst_rate)
        self._stream = None
        if self.src_rate != self.dst_rate:
            import soxr

            self._stream = soxr.ResampleStream(self.src_rate, self.dst_rate, 1, dtype="float32", quality=quality)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        if self._stream is None:
            return chunk
        return self._stream.resample_chunk(chunk, last=False)

    def flush(self) -> np.ndarray:
        """The samples still held in the filter; call once at the end of the utterance."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return out


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 mono
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / float(self.sample_rate)


DECODE_BLOCK_SECONDS = 1.0  # decoders read this much at a time, mixed to mono at once
SF_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports an unknown length as the largest frame count


def _decode_soundfile(data: bytes, max_seconds: float | None) -> DecodedAudio:
    """WAV, FLAC, OGG, MP3 through libsndfile: the length from the header first (a 0.3 MB FLAC can hold 30 minutes
    of silence), then one block at a time, mixed to mono, stopping past ``max_seconds`` (a header can lie)."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        rate = int(f.samplerate)
        known = 0 < f.frames < SF_UNKNOWN_FRAMES  # a FLAC stream may leave its length out of the header
        if max_seconds is not None and known and f.frames / rate > max_seconds:
            raise AudioTooLongError(max_seconds, f.frames / rate)
        limit = None if max_seconds is None else int(max_seconds * rate)
        blocks, total = [], 0
        blocksize = max(1, int(rate * DECODE_BLOCK_SECONDS))
        while True:
            # read() returns what was decoded; blocks() would not do here: it trusts the header's length, and an MP3
            # header can promise more frames than the stream holds (it then yields stale buffer contents)
            block = f.read(blocksize, dtype="float32", always_2d=True)
            if len(block) == 0:
                break
            blocks.append(to_mono_float32(block))
            total += len(block)
            if limit is not None and total > limit:
                raise AudioTooLongError(max_seconds)
    samples = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return DecodedAudio(samples, rate)


def _decode_av(data: bytes, max_seconds: float | None) -> DecodedAudio:
    """Containers soundfile cannot read (webm/opus from browsers, m4a; FLAC streams without a length): PyAV ships
    with aiortc. Mono (the channels' mean, as for soundfile) as it decodes, stopping past ``max_seconds``."""
    import av

    chunks, rate, total = [], None, 0
    with av.open(io.BytesIO(data)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError("the file has no audio stream")
        resampler = av.AudioResampler(format="flt")  # packed float32, channels kept: mixed to mono as soundfile's
        for frame in container.decode(stream):
            rate = rate or frame.sample_rate
            for out in resampler.resample(frame):
                channels = max(1, len(out.layout.channels))
                chunk = to_mono_float32(out.to_ndarray().reshape(-1, channels))
                chunks.append(chunk)
                total += len(chunk)
            if max_seconds is not None and total > max_seconds * rate:
                raise AudioTooLongError(max_seconds)
    if not chunks or rate is None:
        raise AudioError("the file decodes to no audio")
    return DecodedAudio(np.concatenate(chunks).astype(np.float32), int(rate))


def load_audio(
    source: AudioSource, *, max_bytes: int = MAX_AUDIO_BYTES, max_seconds: float | None = None
) -> DecodedAudio:
    """Decode a path, encoded bytes (WAV, FLAC, OGG, MP3, WebM, M4A...) or an ``(array, rate)`` pair.

    ``max_seconds``: refuse longer audio (``AudioTooLongError``) from the header when it says, else while
    decoding: memory stays at about ``max_seconds`` of mono float32 whatever the file holds."""
    if isinstance(source, tuple):
        samples, rate = source
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise AudioError(f"sample rate must be a positive integer, got {rate!r}")
        decoded = DecodedAudio(to_mono_float32(samples), int(rate))
        if max_seconds is not None and decoded.seconds > max_seconds:
            raise AudioTooLongError(max_seconds, decoded.seconds)
        return decoded
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        if path.stat().st_size > max_bytes:
            raise AudioError(f"audio file {path} is larger than {max_bytes // (1024 * 1024)} MiB")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        raise AudioError(f"cannot read audio from {type(source).__name__}")
    if not data:
        raise AudioError("the audio is empty")
    if len(data) > max_bytes:
        raise AudioError(f"audio is larger than {max_bytes // (1024 * 1024)} MiB")
    errors = []
    for decode in (_decode_soundfile, _decode_av):
        try:
            decoded = decode(data, max_seconds)
        except AudioError:
            raise
        except Exception as e:  # each decoder raises its own types for garbage
            errors.append(_decode_reason(e))
            continue
        if decoded.samples.size == 0:
            raise AudioError("the audio decodes to no samples")
        if not np.all(np.isfinite(decoded.samples)):
            raise AudioError("the audio contains NaN or infinite samples")
        return decoded
    reasons = "; ".join(dict.fromkeys(e for e in errors if e)) or "unknown format"
    raise AudioError(f"could not decode the audio (tried WAV, FLAC, OGG, MP3, WebM and M4A): {reasons}")


def _decode_reason(e: Exception) -> str:
    """A decoder's complaint for a person: libsndfile's and FFmpeg's own text, without object reprs or errno."""
    text = getattr(e, "error_string", None) or getattr(e, "strerror", None) or str(e)
    text = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "the upload", str(text))
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text.strip().rstrip(".")


def check_duration(audio: DecodedAudio, min_s: float, max_s: float, what: str = "audio") -> None:
    if not (min_s <= audio.seconds <= max_s):
        raise AudioError(f"{what} must be {min_s:g}-{max_s:g} s long, got {audio.seconds:.2f} s")


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(samples, dtype=np.float32), int(sample_rate), subtype="PCM_16")
