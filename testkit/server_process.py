"""``duplex serve`` as a child process on a free loopback port, for tests and benchmarks that measure the server's own
memory, threads and file descriptors (an in-process server would mix the client's into them).

    with ServerProcess(env={"DUPLEX_LLM__MAX_TOKENS": "16"}) as server:
        server.rss_mb(), server.port, server.url("/ws")

The fallback engines by default (espeak, pocketsphinx, the bundled SmolLM2): they load offline in ~10 s.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FALLBACK_ENGINES = ("--tts", "espeak", "--stt", "pocketsphinx", "--llm", "local")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m agent.cli serve`` from this checkout; ``start()`` waits until the voice pipeline is ready."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        engines: tuple[str, ...] = FALLBACK_ENGINES,
        log_path: str | Path | None = None,
        ready_timeout_s: float = 300.0,
    ):
        self.port = free_port()
        self.args = [*engines, *args]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> ServerProcess:
        import httpx

        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "agent.cli", "serve", "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(
            [*cmd, *self.args], cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"duplex serve exited with status {self.proc.returncode}")
            try:
                health = httpx.get(self.url("/healthz", "http"), timeout=2).json()
                if health["models"]["pipeline"]["state"] == "ready":
                    return self
                if health["models"]["pipeline"]["state"] == "failed":
                    raise RuntimeError(f"duplex serve cannot load its engines: {health}")
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("duplex serve did not become ready")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- what the process holds ----------------------------------------------------------------------------------
    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def rss_mb(self) -> float:
        return self._status("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """The highest RSS since start or since ``reset_peak()`` (``VmHWM``)."""
        return self._status("VmHWM") / 1024

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def threads(self) -> int:
        return self._status("Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))
