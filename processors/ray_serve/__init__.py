"""The TTS and STT engines on Ray Serve: deployments of the catalogue's engines (``replica.py``), remote engines with
the engine interfaces (``remote.py``), the placement that ``duplex serve --ray`` loads them with (``cluster.py``) and
its settings (``options.py``). See docs/deploy.md.

Names load on first use, so the options are read without Ray installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import DeploymentOptions, RayOptions

_LAZY = {
    "RayPlacement": ".cluster",
    "RemoteTTSEngine": ".remote",
    "RemoteSTTEngine": ".remote",
    "RemoteVoice": ".protocol",
    "EngineReplica": ".replica",
}

__all__ = ["DeploymentOptions", "RayOptions", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
