"""Remote engines on a local Ray instance (2 CPUs): the catalogue's espeak, Qwen3-TTS (tiny random model) and
pocketsphinx as Ray Serve deployments of two replicas each, used through ``RemoteTTSEngine`` / ``RemoteSTTEngine``.

* the same audio and the same errors as the local engines; voices by content, built on every replica (an uploaded
  voice needs no shared disk);
* cancel through the hop: cancel event set -> the engine on the replica stopped (the replica's clock is this
  process's on one machine), within one Qwen3-TTS frame plus the watcher's poll and the hop;
* a replica killed (SIGKILL) mid-stream: the stream ends at once with ``EngineUnavailableError`` and the next one
  is served by the live replica; a transcription is retried on the live replica;
* per-session STT engines (pocketsphinx) stick to one replica.

Slow (Ray, replica processes importing torch): marked ``slow``; CI runs them.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from processors.catalogue import STTOptions, TTSOptions
from processors.ray_serve.options import DeploymentOptions
from processors.tts_engine import EngineUnavailableError, InvalidTextError, UnsupportedLanguageError, VoiceError
from testkit.clips import clip_path, clip_text, speech
from tests.conftest import delete_apps, ray_placement
from voices.registry import VoiceRegistry

pytestmark = pytest.mark.slow

PREFIX = "t-engines"
LONG = "This is a long reply that the engine keeps generating for a while, so that we can stop it. " * 6


def replicas(n: int = 2) -> DeploymentOptions:
    return DeploymentOptions(replicas=n, cpus=0.1)


@pytest.fixture(scope="module")
def placement(ray_cluster):
    placement = ray_placement(PREFIX, tts=replicas(), stt=replicas())
    yield placement
    delete_apps(PREFIX)


@pytest.fixture(scope="module")
def espeak_remote(placement):
    return placement.row("tts", "espeak").load(TTSOptions(engine="espeak"), None)


@pytest.fixture(scope="module")
def qwen_remote(placement, tiny_qwen_never_eos_dir):
    options = TTSOptions(engine="qwen3", model=str(tiny_qwen_never_eos_dir))
    return placement.row("tts", "qwen3").load(options, "cpu")


@pytest.fixture(scope="module")
def sphinx_remote(placement):
    return placement.row("stt", "pocketsphinx").load(STTOptions(engine="pocketsphinx"), None)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return VoiceRegistry(tmp_path_factory.mktemp("voices"))


def replica_stats(engine) -> list[dict]:
    return engine._handle.broadcast("stats").results(timeout_s=20)


def test_espeak_remote_speaks_like_the_local_engine(espeak_remote, registry):
    from processors.espeak_tts import EspeakEngine

    local = EspeakEngine()
    assert (espeak_remote.name, espeak_remote.sample_rate) == ("espeak", local.sample_rate)
    assert espeak_remote.languages == local.languages
    voice = espeak_remote.load_voice(registry.default().spec())
    text = "The remote engine speaks. It streams every chunk as the replica makes it."
    chunks = list(espeak_remote.stream(text, voice, "English"))
    want = local.synthesize(text, local.load_voice(registry.default().spec()), "English")
    got = np.concatenate(chunks)
    assert len(chunks) > 5 and abs(len(got) - len(want)) < 0.02 * len(want)
    stats = espeak_remote.last_stats
    assert stats.complete and stats.chunks == len(chunks) and stats.replica and stats.pid != os.getpid()
    print(
        f"\nespeak remote: first chunk {stats.first_chunk_s * 1000:.1f} ms, hop median "
        f"{np.median(stats.hops_s) * 1000:.2f} ms over {stats.chunks} chunks"
    )
    # ids the engine resolves itself, checked on the replicas
    german = espeak_remote.voice_from_id("German+m3")
    assert len(np.concatenate(list(espeak_remote.stream("Guten Tag.", german, "German")))) > 10000
    with pytest.raises(VoiceError):
        espeak_remote.voice_from_id("no-such-voice+zz")


def test_request_errors_come_back_as_the_engines_errors(espeak_remote, registry):
    voice = espeak_remote.load_voice(registry.default().spec())
    with pytest.raises(UnsupportedLanguageError):
        espeak_remote.stream("Hello.", voice, "Klingon")  # checked here, before any call
    with pytest.raises(InvalidTextError):
        espeak_remote.stream("   ", voice)
    from processors.espeak_tts import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="rate must be from 80 to 450"):
        list(espeak_remote.stream("Hello.", voice, "English", rate=9999))  # raised on the replica, same class


def test_an_uploaded_voice_is_built_on_every_replica(qwen_remote, registry):
    clip = clip_path("flite_meeting_rms.wav")
    voice = registry.add(clip.read_bytes(), name="Ada", voice_id="ada", transcript=clip_text("flite_meeting_rms.wav"))
    remote_voice = qwen_remote.load_voice(voice.spec())
    stats = replica_stats(qwen_remote)
    assert len(stats) == 2
    assert all(remote_voice.key in s["voices"] for s in stats), stats
    served_by = set()
    for _ in range(6):  # both replicas speak it (the router spreads requests)
        chunks = list(qwen_remote.stream("Hi.", remote_voice, "English", max_frames=4))
        assert chunks
        served_by.add(qwen_remote.last_stats.pid)
    assert len(served_by) == 2, served_by
    with pytest.raises(VoiceError, match="no reference audio"):
        qwen_remote.load_voice(registry.default().spec().__class__(id="nothing"))


def test_cancel_stops_generation_on_the_replica(qwen_remote, registry):
    voice = qwen_remote.load_voice(registry.default().spec())
    list(qwen_remote.stream("Warm up.", voice, "English", max_frames=8))
    latencies = []
    for _ in range(5):
        cancel = threading.Event()
        stream = qwen_remote.stream(LONG, voice, "English", cancel, max_frames=2000)
        next(stream)
        next(stream)
        stream_id = qwen_remote.last_stats.stream_id
        t0 = time.perf_counter()
        cancel.set()
        rest = list(stream)
        assert len(rest) <= 1
        ended = None
        deadline = time.monotonic() + 10
        while ended is None and time.monotonic() < deadline:
            for s in replica_stats(qwen_remote):
                for sid, at, outcome in s["finished"]:
                    if sid == stream_id:
                        ended = at
                        assert outcome == "cancelled", outcome
            time.sleep(0.02)
        assert ended is not None
        latencies.append(ended - t0)
    latencies.sort()
    print(f"\ncancel set -> engine stopped on the replica: {[round(x * 1000, 1) for x in latencies]} ms")
    # one frame of the tiny model is a few ms; the watcher polls every 5 ms; the hop is ~1 ms: 80 ms is one frame
    # of audio, the bound a listener hears
    assert latencies[len(latencies) // 2] < 0.08, latencies


def test_a_replica_killed_mid_stream(qwen_remote, registry):
    voice = qwen_remote.load_voice(registry.default().spec())
    stream = qwen_remote.stream(LONG, voice, "English", max_frames=4000)
    next(stream)
    (in_flight,) = qwen_remote.streams_in_flight()
    victim = in_flight.pid
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(EngineUnavailableError, match="stopped"):
        for _ in stream:
            pass
    noticed = time.perf_counter() - t0
    assert noticed < 5.0, noticed
    # the next utterances go to the live replica at once
    for _ in range(3):
        chunks = list(qwen_remote.stream("Still here.", voice, "English", max_frames=6))
        assert chunks and qwen_remote.last_stats.pid != victim
    print(f"\nreplica {victim} killed: the stream failed after {noticed * 1000:.0f} ms; the next ones went elsewhere")


CALLER = """
import sys, time
import ray
from ray import serve
from processors.ray_serve.remote import RemoteTTSEngine
from voices.registry import VoiceRegistry
ray.init(address=sys.argv[1])
handle = serve.get_deployment_handle("engine", sys.argv[2])
engine = RemoteTTSEngine(handle, handle.info.remote().result())
voice = engine.load_voice(VoiceRegistry(None).default().spec())
stream = engine.stream("A long reply for nobody. " * 60, voice, "English", max_frames=4000)
next(stream)
print("STREAM", engine.last_stats.stream_id, flush=True)
time.sleep(600)
"""


def test_a_caller_that_dies_leaves_no_stream_behind(ray_cluster, qwen_remote):
    """An agent process killed mid-utterance cannot cancel; the replica notices its lease is gone and stops."""
    import subprocess
    import sys

    gcs = ray_cluster.get_runtime_context().gcs_address
    app = qwen_remote._handle.deployment_id.app_name
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, gcs, app], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while not line.startswith("STREAM") and time.monotonic() < deadline:
            line = caller.stdout.readline()
        assert line.startswith("STREAM"), line
        stream_id = line.split()[1]
    finally:
        caller.kill()
        caller.wait(10)
    killed = time.perf_counter()
    outcome = None
    while outcome is None and time.perf_counter() - killed < 30:
        for s in replica_stats(qwen_remote):
            outcome = next(((at, out) for sid, at, out in s["finished"] if sid == stream_id), outcome)
        time.sleep(0.2)
    assert outcome is not None and outcome[1] == "orphaned", outcome
    print(f"\nthe caller died; its stream stopped on the replica {outcome[0] - killed:.1f} s later")
    assert outcome[0] - killed < 15


def test_remote_stt_transcribes_and_survives_a_dead_replica(sphinx_remote):
    from processors.pocketsphinx_stt import PocketsphinxEngine

    audio = speech("flite_weather_kal16.wav", 16000)
    want = PocketsphinxEngine().transcribe(audio).text
    session = sphinx_remote.session()
    assert session.session_id and session.transcribe(audio).text == want
    assert sphinx_remote.holds_gil is True  # the replica's engine's: the adapter skips interim passes alike
    pids = {s["pid"] for s in replica_stats(sphinx_remote)}
    assert len(pids) == 2
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    for _ in range(4):  # each call lands on the live replica, or is retried there
        assert session.transcribe(audio).text == want
    from processors.stt_engine import STTInputError

    with pytest.raises(STTInputError):
        session.transcribe(audio.astype(np.float64))  # checked before it travels
