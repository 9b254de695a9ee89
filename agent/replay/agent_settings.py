"""The agent settings a replay runs with: ``agent.settings.Settings`` defaults plus the scenario's ``settings``, and
nothing from the environment unless asked (``inherit_env``), so a scenario's result does not depend on the shell
it runs in.

``settings_errors`` checks a scenario's ``settings`` mapping against the fields of ``Settings`` (walked from the
model, so it follows whatever ``Settings`` holds): an unknown key is an error naming the closest valid one, and a
bad value is an error naming its field.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.settings import Settings

ENV_PREFIX = "DUPLEX_"


class _DefaultsOnly(Settings):
    """``Settings`` that reads only what it is given: no environment variables, no dotenv or secrets files."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):
        return (init_settings,)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``Model`` or ``Model | None``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for m in map(_nested_model, typing.get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def unknown_keys(data: Any, model: type[BaseModel] = Settings, prefix: str = "settings") -> list[str]:
    """``prefix.key: unknown setting (did you mean 'x'?)`` for every key of ``data`` that ``model`` does not have,
    at any depth."""
    if not isinstance(data, dict):
        return []
    errors = []
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(fields)}"
            errors.append(f"{prefix}.{key}: unknown setting ({hint})")
            continue
        nested = _nested_model(fields[key].annotation)
        if nested is not None:
            errors += unknown_keys(value, nested, f"{prefix}.{key}")
    return errors


def settings_errors(data: Any) -> list[str]:
    """Every problem with a scenario's ``settings`` mapping, one line each (empty: it is valid)."""
    if not isinstance(data, dict):
        return ["settings: a mapping of agent.settings.Settings fields (tts, stt, llm, vad, turn, ...)"]
    errors = unknown_keys(data)
    if errors:
        return errors
    try:
        _DefaultsOnly.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            errors.append(f"settings.{loc}: {err['msg']}")
    return errors


def env_variables() -> list[str]:
    """The ``DUPLEX_*`` variables set in this process's environment (names only)."""
    return sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))


def scenario_settings(overrides: dict, *, inherit_env: bool = False) -> Settings:
    """``Settings`` for a replay: defaults (or, with ``inherit_env``, the environment like ``duplex serve``) with
    ``overrides`` (the scenario's ``settings``) on top. Raises ``ValueError`` listing ``settings_errors``."""
    errors = settings_errors(overrides)
    if errors:
        raise ValueError("; ".join(errors))
    if inherit_env:
        return Settings.model_validate(_merge(Settings().model_dump(), overrides))
    isolated = _DefaultsOnly.model_validate(overrides)
    return Settings.model_construct(**{name: getattr(isolated, name) for name in Settings.model_fields})


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
