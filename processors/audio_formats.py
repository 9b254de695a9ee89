"""Streaming encoders for the formats of the OpenAI speech API (``/v1/audio/speech``) and a streaming time-stretch
for its ``speed``.

Each encoder takes float32 mono chunks and returns the bytes the format has for them so far, so a response can be
sent while the engine still generates: ``pcm`` (raw 16-bit little-endian), ``wav`` (16-bit PCM whose header gives
the unknown lengths as 0xFFFFFFFF, as streamed WAV does), and through PyAV (FFmpeg, installed with pipecat's WebRTC
transport) ``mp3`` (LAME), ``opus`` (Opus in Ogg, pages of 60 ms so audio leaves at once), ``aac`` (AAC-LC in ADTS)
and ``flac`` (a non-seekable stream: the header's total length stays "unknown"). ``Tempo`` changes speed without
changing pitch (FFmpeg's ``atempo``, chained below 0.5x).
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import Any

import numpy as np

from .audio import SPEECH_API_BIT_RATES, SPEECH_API_OGG_PAGE_MS, SPEECH_API_SPEEDS, float_to_pcm16

# format -> (content type, FFmpeg muxer, codec); pcm and wav are written here
FORMATS: dict[str, tuple[str, str | None, str | None]] = {
    "mp3": ("audio/mpeg", "mp3", "libmp3lame"),
    "opus": ("audio/ogg", "ogg", "libopus"),
    "aac": ("audio/aac", "adts", "aac"),
    "flac": ("audio/flac", "flac", "flac"),
    "wav": ("audio/wav", None, None),
    "pcm": ("audio/pcm", None, None),
}
MIN_SPEED, MAX_SPEED = SPEECH_API_SPEEDS


class StreamEncoder:
    """``encode(samples)`` -> bytes ready now; ``finish()`` -> the rest. Not thread-safe (one per stream)."""

    content_type = "application/octet-stream"

    def encode(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class PCMEncoder(StreamEncoder):
    content_type = FORMATS["pcm"][0]

    def encode(self, samples: np.ndarray) -> bytes:
        return float_to_pcm16(samples) if len(samples) else b""


class WAVEncoder(StreamEncoder):
    """16-bit mono PCM after a header written before the length is known (sizes 0xFFFFFFFF)."""

    content_type = FORMATS["wav"][0]

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._header: bytes | None = self.header(sample_rate)

    @staticmethod
    def header(sample_rate: int) -> bytes:
        unknown = 0xFFFFFFFF
        fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
        return (
            b"RIFF"
            + struct.pack("<I", unknown)
            + b"WAVEfmt "
            + struct.pack("<I", 16)
            + fmt
            + b"data"
            + (struct.pack("<I", unknown))
        )

    def _take_header(self) -> bytes:
        header, self._header = self._header or b"", None
        return header

    def encode(self, samples: np.ndarray) -> bytes:
        if not len(samples):
            return b""
        return self._take_header() + float_to_pcm16(samples)

    def finish(self) -> bytes:
        return self._take_header()  # an empty stream is still a (header-only) WAV


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file for FFmpeg's muxers: what they write is taken out as it comes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class AVEncoder(StreamEncoder):
    """A PyAV (FFmpeg) codec and muxer writing into memory as the packets come."""

    def __init__(self, fmt: str, sample_rate: int):
        import av

        content_type, muxer, codec = FORMATS[fmt]
        bit_rate = SPEECH_API_BIT_RATES.get(fmt)
        self.content_type = content_type
        self.sample_rate = sample_rate
        self._sink = _Sink()
        options = {"page_duration": str(SPEECH_API_OGG_PAGE_MS * 1000)} if muxer == "ogg" else {}
        self._container = av.open(self._sink, mode="w", format=muxer, options=options)
        self._stream = self._container.add_stream(codec, rate=sample_rate)
        self._stream.layout = "mono"
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._resampler = av.AudioResampler(format=self._stream.codec_context.format.name, layout="mono")
        self._closed = False

    def _mux(self, frame: Any) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def encode(self, samples: np.ndarray) -> bytes:
        import av

        if len(samples):
            pcm = np.frombuffer(float_to_pcm16(samples), dtype="<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            for converted in self._resampler.resample(frame):
                self._mux(converted)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        for converted in self._resampler.resample(None):
            self._mux(converted)
        self._mux(None)  # flush the codec
        self._container.close()
        return self._sink.take()


def encoder_for(fmt: str, sample_rate: int) -> StreamEncoder:
    """The encoder for one of ``FORMATS``; raises ``ValueError`` for others."""
    if fmt == "pcm":
        return PCMEncoder()
    if fmt == "wav":
        return WAVEncoder(sample_rate)
    if fmt in FORMATS:
        return AVEncoder(fmt, sample_rate)
    raise ValueError(f"unknown audio format {fmt!r}; one of {', '.join(FORMATS)}")


class Tempo:
    """Plays float32 mono audio ``speed`` times faster (0.25-4), pitch kept, as a stream (FFmpeg ``atempo``)."""

    def __init__(self, speed: float, sample_rate: int):
        import av

        if not (MIN_SPEED <= speed <= MAX_SPEED):
            raise ValueError(f"speed must be from {MIN_SPEED:g} to {MAX_SPEED:g}, got {speed!r}")
        self.sample_rate = sample_rate
        factors = []
        rest = float(speed)
        while rest < 0.5:  # one atempo takes 0.5-100
            factors.append(0.5)
            rest /= 0.5
        factors.append(rest)
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(
            format="flt", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate)
        )
        source = node
        for factor in factors:
            nxt = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(nxt)
            node = nxt
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._source = source
        self._pts = 0
        self._done = False

    def _pull(self) -> np.ndarray:
        import av

        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        import av

        if not len(samples):
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        frame.time_base = Fraction(1, self.sample_rate)
        frame.pts = self._pts
        self._pts += len(samples)
        self._graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        if self._done:
            return np.zeros(0, np.float32)
        self._done = True
        self._graph.push(None)
        return self._pull()
