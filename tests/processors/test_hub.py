"""``processors.hub.fetch``: where an engine's model comes from.

Paths are checked at once ("no such directory"); a hub id that is not cached while the hub cannot be reached is a
clear error within a second or two, not the hub client's minute of retries; a download from a hub (a real local one,
``testkit.local_servers.LocalHub``, speaking the hub's protocol to the real ``huggingface_hub`` client in a fresh
process, as ``duplex serve`` would) reports its bytes as they arrive; a cached model loads without asking the hub.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processors.hub import HubModelError, fetch, is_path
from testkit.local_servers import LocalHub

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))} | env
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout
    )


def test_paths_and_hub_ids():
    assert not is_path("Qwen/Qwen3-TTS-12Hz-0.6B-Base") and not is_path("nvidia/parakeet-tdt-0.6b-v2")
    for path in ("/models/qwen", "./qwen", "~/qwen", "models/qwen/v1", "parakeet.nemo", "C:\\models"):
        assert is_path(path), path


def test_a_missing_directory_says_so(tmp_path):
    with pytest.raises(HubModelError, match=f"no such directory {tmp_path}/nope"):
        fetch(str(tmp_path / "nope"), what="the Qwen3-TTS model")
    with pytest.raises(HubModelError, match="no such file"):
        fetch(str(tmp_path / "model.nemo"), what="the Parakeet model")
    assert fetch(str(tmp_path), what="x") == tmp_path


def test_not_cached_and_no_network_fails_at_once(tmp_path):
    """HF_HUB_OFFLINE unset, the hub unreachable (connection refused): the Qwen3-TTS engine says so in seconds and
    the message says what to do; the hub client alone retries for about a minute (1+2+4+8+8 s per file)."""
    code = (
        "import time, json\n"
        "from processors.qwen3_tts import Qwen3TTSEngine\n"
        "from processors.qwen3_tts.engine import ModelUnavailableError\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    Qwen3TTSEngine.from_pretrained('duplex-test/not-cached', device='cpu')\n"
        "except ModelUnavailableError as e:\n"
        "    print(json.dumps({'s': time.perf_counter() - t0, 'message': str(e)}))\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    out = run_python(code, env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["s"] < 5, result
    message = result["message"]
    assert "not in the Hugging Face cache" in message and "cannot be reached" in message, message
    assert "huggingface-cli download duplex-test/not-cached" in message, message
    assert "Retry" not in out.stderr, out.stderr[-2000:]


def test_download_reports_progress_then_the_cache_serves_offline(tiny_qwen_dir, tmp_path):
    code = (
        "import json\n"
        "from processors import hub\n"
        "events = []\n"
        "with hub.report_downloads(lambda repo, got, total: events.append((got, total))):\n"
        "    path = hub.fetch('duplex-test/qwen3-tiny', what='the model', required=('config.json',))\n"
        "print(json.dumps({'path': str(path), 'events': events}))\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    size = sum(p.stat().st_size for p in tiny_qwen_dir.rglob("*") if p.is_file())
    with LocalHub({"duplex-test/qwen3-tiny": tiny_qwen_dir}, bytes_per_s=size / 3) as hub:
        t0 = time.monotonic()
        out = run_python(code, env | {"HF_ENDPOINT": hub.url})
        took = time.monotonic() - t0
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        served = list(hub.downloads)
        events = [tuple(e) for e in result["events"]]
        assert events[0] == (0, size) and events[-1] == (size, size), events
        received = [got for got, _ in events]
        assert received == sorted(received) and any(0 < got < size for got in received), events
        snapshot = Path(result["path"])
        assert (snapshot / "config.json").read_bytes() == (tiny_qwen_dir / "config.json").read_bytes()
        assert {Path(p).name for p in served} >= {"config.json", "model.safetensors"}

        # now cached: found offline, without a request
        out = run_python(code, env | {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads(out.stdout.strip().splitlines()[-1])["path"] == str(snapshot)
        assert hub.downloads == served
    print(f"\nhub download of {size / 1e6:.1f} MB throttled to 3 s: {took:.1f} s, {len(events)} progress reports")
