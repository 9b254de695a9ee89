"""``load_audio`` with ``max_seconds``: a small file that holds far more audio than allowed is refused from its header,
or once decoding passes the limit, and decoding never holds more than about the limit's worth of mono samples."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from processors.audio import AudioTooLongError, load_audio

RATE = 48_000


def flac(seconds: float, channels: int = 1, *, unknown_length: bool = False, noise: bool = False) -> bytes:
    n = int(seconds * RATE)
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.1, (n, channels)) if noise else np.zeros((n, channels))
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), RATE, format="FLAC")
    data = bytearray(buf.getvalue())
    if unknown_length:  # STREAMINFO's 36-bit total sample count = 0: "unknown" (a live stream's header)
        data[8 + 13] &= 0xF0
        data[8 + 14 : 8 + 18] = b"\0\0\0\0"
    return bytes(data)


def webm(seconds: float, channels: int = 2) -> bytes:
    """Opus in WebM (what browsers record): decoded by PyAV, not libsndfile."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=RATE, layout="stereo" if channels == 2 else "mono")
        frame_n = 960
        silence = np.zeros((channels, frame_n), np.float32)
        for i in range(int(seconds * RATE / frame_n)):
            frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout=stream.layout.name)
            frame.sample_rate, frame.pts = RATE, i * frame_n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def test_header_length_refuses_before_decoding():
    data = flac(1800)  # 30 minutes of silence in ~0.3 MB
    assert len(data) < 1 << 20
    with pytest.raises(AudioTooLongError) as e:
        load_audio(data, max_seconds=30)
    assert e.value.seconds == pytest.approx(1800) and "got 1800.00 s" in str(e.value)
    assert peak_mb(lambda: pytest.raises(AudioTooLongError, load_audio, data, max_seconds=30)) < 5


@pytest.mark.parametrize("make", [lambda: flac(900, 2, unknown_length=True), lambda: webm(900)])
def test_decoding_stops_past_the_limit(make):
    """No length in the header (a FLAC stream; Opus in WebM through PyAV): decoding stops at 30 s. Decoding all of
    15 minutes of 48 kHz stereo would hold 330 MB of float32."""
    data = make()
    with pytest.raises(AudioTooLongError) as e:
        load_audio(data, max_seconds=30)
    assert e.value.seconds is None and "more than 30 s" in str(e.value)
    assert peak_mb(lambda: pytest.raises(AudioTooLongError, load_audio, data, max_seconds=30)) < 30


def test_within_the_limit_decodes_whole_and_mono():
    stereo = flac(12, 2, unknown_length=True, noise=True)
    decoded = load_audio(stereo, max_seconds=30)
    assert decoded.sample_rate == RATE and decoded.samples.ndim == 1 and decoded.seconds == pytest.approx(12)
    whole, _ = sf.read(io.BytesIO(flac(12, 2, noise=True)), dtype="float32")
    assert np.allclose(decoded.samples, whole.mean(axis=1), atol=1e-6)
    assert load_audio(flac(40)).seconds == pytest.approx(40)  # no limit asked: everything
    with pytest.raises(AudioTooLongError):
        load_audio((np.zeros(RATE * 31, np.float32), RATE), max_seconds=30)


def test_an_mp3_decodes_to_what_it_holds_not_what_its_header_promises():
    """The gradio wheel's MP3s promise more frames in their header than their stream holds (heath_ledger.mp3: 113152
    against 96768 decoded by libsndfile and by FFmpeg alike); a block reader that trusted the header appended 0.5 s
    of stale samples to every such file. Decoded by blocks, the audio is the whole-file decode."""
    import av

    from testkit.clips import human_clip_path

    path = human_clip_path("heath_ledger.mp3")
    with sf.SoundFile(str(path)) as f:
        promised = f.frames
    whole, _ = sf.read(str(path), dtype="float32")
    with av.open(str(path)) as container:
        ffmpeg = sum(frame.samples for frame in container.decode(audio=0))
    got = load_audio(path).samples
    assert promised > len(whole) == ffmpeg  # the file really is one of those
    assert len(got) == len(whole) and np.allclose(got, whole, atol=1e-6)  # float rounding of the MP3 decoder
