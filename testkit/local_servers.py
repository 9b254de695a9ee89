"""Real HTTP servers on loopback that stand in for services a test cannot reach: an OpenAI-compatible chat
endpoint (``ChatEndpoint``) and a Hugging Face hub that serves local model directories (``LocalHub``). Both are real
uvicorn servers speaking the real protocols, so the clients under test (the OpenAI client inside pipecat,
``huggingface_hub``) run their own code unchanged.

    with ChatEndpoint(models=["scripted"]) as llm:          # llm.url = "http://127.0.0.1:<port>/v1"
        llm.fail = True                                      # chat completions now answer HTTP 500
    with LocalHub({"duplex-test/tiny": model_dir}, bytes_per_s=4e6) as hub:
        os.environ["HF_ENDPOINT"] = hub.url                  # for a subprocess; in-process patch huggingface_hub
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

REPLY = ["Paris", " is", " sunny", " today."]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Server:
    """uvicorn in a daemon thread on a socket bound to 127.0.0.1 (a free port)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=f"local-server-{self.port}", daemon=True
        )

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the local server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


class ChatEndpoint(_Server):
    """``GET /v1/models`` and streaming ``POST /v1/chat/completions`` answering ``REPLY``. ``fail = True`` makes
    completions answer HTTP 500 (an endpoint that broke after the server started); ``api_key`` demands that key."""

    def __init__(self, models: list[str] | None = None, api_key: str | None = None, reply: list[str] = REPLY):
        self.models = list(models or ["scripted"])
        self.fail = False
        self.requests: list[dict] = []
        app = FastAPI()

        def refused(request: Request) -> JSONResponse | None:
            if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            return None

        @app.get("/v1/models")
        async def list_models(request: Request) -> Any:
            return refused(request) or {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}

        @app.post("/v1/chat/completions")
        async def completions(request: Request) -> Any:
            body = await request.json()
            self.requests.append(body)
            if (no := refused(request)) is not None:
                return no
            if self.fail:
                return JSONResponse({"error": {"message": "the model crashed"}}, status_code=500)

            async def events():
                for i, text in enumerate(reply):
                    delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
                    chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(0.01)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        super().__init__(app)
        self.url = f"http://127.0.0.1:{self.port}/v1"


class LocalHub(_Server):
    """The Hugging Face hub's read API for local directories: ``{"owner/name": directory}``. Downloads are sent at
    ``bytes_per_s`` (None: as fast as possible), so that a test can watch a download's progress."""

    def __init__(self, repos: dict[str, Path], bytes_per_s: float | None = None):
        self.repos = {name: Path(path) for name, path in repos.items()}
        self.downloads: list[str] = []
        app = FastAPI()

        def files(repo: str) -> dict[str, Path]:
            root = self.repos[repo]
            return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

        def missing(repo: str) -> JSONResponse:  # the header makes huggingface_hub raise RepositoryNotFoundError
            return JSONResponse({"error": "Repository not found"}, 404, headers={"X-Error-Code": "RepoNotFound"})

        @app.get("/api/models/{owner}/{name}")
        @app.get("/api/models/{owner}/{name}/revision/{revision}")
        async def model_info(owner: str, name: str, revision: str = "main") -> Any:
            repo = f"{owner}/{name}"
            if repo not in self.repos:
                return missing(repo)
            siblings = [{"rfilename": f, "size": p.stat().st_size} for f, p in files(repo).items()]
            return {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings, "tags": []}

        @app.api_route("/{owner}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
        async def resolve(owner: str, name: str, revision: str, path: str, request: Request) -> Any:
            repo = f"{owner}/{name}"
            if repo not in self.repos:
                return missing(repo)
            file = files(repo).get(path)
            if file is None:
                return JSONResponse({"error": "Entry not found"}, 404, headers={"X-Error-Code": "EntryNotFound"})
            data = file.read_bytes()
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Length": str(len(data)),
            }
            if request.method == "HEAD":
                return Response(headers=headers)
            self.downloads.append(f"{repo}/{path}")

            async def body():
                step = 64 * 1024
                for i in range(0, len(data), step):
                    yield data[i : i + step]
                    if bytes_per_s:
                        await asyncio.sleep(step / bytes_per_s)

            return StreamingResponse(body(), headers=headers, media_type="application/octet-stream")

        super().__init__(app)
        self.url = f"http://127.0.0.1:{self.port}"
