"""Where an engine's model comes from: a local path, or a Hugging Face hub id resolved to a local snapshot before the
engine loads it, so that loading never talks to the network.

``fetch(model, what=...)`` answers at once when the model cannot be had: a path that does not exist ("no such
directory", not "use a local directory"), or a hub id that is not cached while the hub cannot be reached (one
request with a short timeout instead of the hub client's retry loop, which spends about a minute on a machine
without network before it fails). A cached snapshot is used without asking the hub. Otherwise the repository is
downloaded into the Hugging Face cache, and the bytes received so far are reported to the callback installed with
``report_downloads`` (the server shows them on ``/healthz`` and the page).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PROBE_TIMEOUT_S = 5.0
POLL_S = 0.5

DownloadCallback = Callable[[str, int, int | None], None]  # (repo id, bytes received, total bytes or None)
_on_download: contextvars.ContextVar[DownloadCallback | None] = contextvars.ContextVar("duplex_download", default=None)


class HubModelError(OSError):
    """The model cannot be had; the message says why and what to do."""


def is_path(model: str) -> bool:
    """True for what can only be a path (absolute, relative with ``.``, ``~``, several components, an existing
    file or directory); False for an ``owner/name`` hub id."""
    if os.path.exists(os.path.expanduser(model)):
        return True
    return model.startswith(("/", "./", "../", "~", ".\\")) or "\\" in model or not HUB_ID.match(model)


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def cached_snapshot(repo_id: str, required: Sequence[str] = ()) -> Path | None:
    """The local snapshot of ``repo_id`` when the Hugging Face cache holds it with every ``required`` file."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    if all((path / name).exists() for name in required):
        return path
    return None


def probe_hub(repo_id: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """(True, "") when the hub answers for ``repo_id``; else (False, why), after one request and no retries."""
    if is_offline():
        return False, "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        HfApi().model_info(repo_id, timeout=timeout)
        return True, ""
    except GatedRepoError:
        return False, f"{repo_id} is gated on the hub: accept its licence there and log in (huggingface-cli login)"
    except RepositoryNotFoundError:
        return False, f"the hub has no model {repo_id}"
    except Exception as e:
        return False, f"the Hugging Face hub cannot be reached ({_reason(e)})"


def _reason(e: BaseException) -> str:
    """The innermost cause's type and first line, without the URL-laden chains the hub client builds."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).splitlines()[0] if str(e) else ""
    text = re.sub(r"<[^>]+ object at 0x[0-9a-f]+>", "", text).strip(" :")
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def repo_size(repo_id: str, allow_patterns: Sequence[str] | None = None) -> int | None:
    """Total bytes of the files ``snapshot_download`` would fetch, from the hub's file list (None if unknown)."""
    try:
        import fnmatch

        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, files_metadata=True, timeout=PROBE_TIMEOUT_S)
        total = 0
        for sibling in info.siblings or []:
            if allow_patterns and not any(fnmatch.fnmatch(sibling.rfilename, p) for p in allow_patterns):
                continue
            total += sibling.size or 0
        return total or None
    except Exception:
        return None


def cache_bytes(repo_id: str) -> int:
    """Bytes in the Hugging Face cache for ``repo_id``, downloads in progress included (``*.incomplete``)."""
    from huggingface_hub import constants

    blobs = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "blobs"
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(blobs):
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total


@contextlib.contextmanager
def report_downloads(callback: DownloadCallback | None) -> Iterator[None]:
    """Downloads made by ``fetch`` in this context (this thread) report their progress to ``callback``."""
    token = _on_download.set(callback)
    try:
        yield
    finally:
        _on_download.reset(token)


@contextlib.contextmanager
def _watch(repo_id: str, total: int | None, callback: DownloadCallback | None) -> Iterator[None]:
    if callback is None:
        yield
        return
    start = cache_bytes(repo_id)
    done = threading.Event()

    def poll() -> None:
        while not done.wait(POLL_S):
            callback(repo_id, max(0, cache_bytes(repo_id) - start), total)

    callback(repo_id, 0, total)
    thread = threading.Thread(target=poll, name="duplex-download-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        callback(repo_id, max(0, cache_bytes(repo_id) - start), total)


def fetch(
    model: str | os.PathLike[str],
    *,
    what: str,
    required: Sequence[str] = (),
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """The local path of ``model``: itself when it is a path, else the hub id's snapshot in the Hugging Face cache
    (downloaded now if it is not cached). ``what`` names the model in messages ("the Qwen3-TTS model");
    ``required``: files a usable snapshot holds. Raises ``HubModelError`` with what to do."""
    name = os.path.expanduser(str(model))
    if is_path(name):
        path = Path(name)
        if not path.exists():
            kind = "file" if Path(name).suffix else "directory"
            raise HubModelError(
                f"{what}: no such {kind} {name} (give an existing local path, or a Hugging Face id like owner/name)"
            )
        return path
    cached = cached_snapshot(name, required)
    if cached is not None:
        return cached
    reachable, why = probe_hub(name)
    if not reachable:
        raise HubModelError(
            f"{what} {name} is not in the Hugging Face cache and cannot be downloaded: {why}. Download it where "
            f"there is network (huggingface-cli download {name}) and copy the cache, or give a local path"
        )
    from huggingface_hub import snapshot_download

    callback = _on_download.get()
    total = repo_size(name, allow_patterns) if callback is not None else None
    with _watch(name, total, callback):
        try:
            path = Path(snapshot_download(name, allow_patterns=list(allow_patterns) if allow_patterns else None))
        except Exception as e:
            raise HubModelError(f"{what} {name}: the download failed ({_reason(e)})") from e
    missing = [f for f in required if not (path / f).exists()]
    if missing:
        raise HubModelError(f"{what} {name}: the downloaded snapshot lacks {', '.join(missing)}")
    return path
