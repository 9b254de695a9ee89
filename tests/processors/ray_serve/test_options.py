"""``RayOptions`` / ``DeploymentOptions`` (no Ray needed): Serve deployment options from settings, validation, env
names through ``agent.settings``, and the ``--ray`` flag."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from processors.ray_serve.options import DeploymentOptions, RayOptions


def test_fixed_replicas_and_resources():
    shape = DeploymentOptions(replicas=3, gpus=0.5, cpus=2, max_ongoing_requests=12).serve_options()
    assert shape == {
        "max_ongoing_requests": 12,
        "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.5},
        "num_replicas": 3,
    }


def test_autoscaling_range():
    shape = DeploymentOptions(replicas=1, max_replicas=6, target_ongoing_requests=5).serve_options()
    assert "num_replicas" not in shape
    assert shape["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 6,
        "target_ongoing_requests": 5.0,
    }
    with pytest.raises(ValidationError, match="below replicas"):
        DeploymentOptions(replicas=4, max_replicas=2)
    with pytest.raises(ValidationError):
        RayOptions(engines=["llm"])
    with pytest.raises(ValidationError):
        RayOptions(tts={"replica": 2})  # unknown keys are errors


def test_settings_from_env_and_the_ray_flag(monkeypatch):
    from agent.serve import configure, settings_from_args
    from agent.settings import Settings, unknown_env_vars

    monkeypatch.setenv("DUPLEX_RAY__TTS__REPLICAS", "2")
    monkeypatch.setenv("DUPLEX_RAY__TTS__GPUS", "0.5")
    monkeypatch.setenv("DUPLEX_RAY__ENGINES", '["tts"]')
    assert not unknown_env_vars()
    s = Settings()
    assert not s.ray.enabled and s.ray.tts.replicas == 2 and s.ray.tts.gpus == 0.5 and s.ray.engines == ["tts"]
    parser = argparse.ArgumentParser()
    configure(parser)
    local = settings_from_args(parser.parse_args(["--ray"]))
    assert local.ray.enabled and local.ray.address is None and local.ray.tts.replicas == 2
    remote = settings_from_args(parser.parse_args(["--ray", "10.0.0.5:6379"]))
    assert remote.ray.enabled and remote.ray.address == "10.0.0.5:6379"
    assert settings_from_args(parser.parse_args([])).ray.enabled is False
    monkeypatch.setenv("DUPLEX_RAY__TTS__REPLICA", "2")
    assert unknown_env_vars() == ["DUPLEX_RAY__TTS__REPLICA"]


def test_in_process_by_default_and_the_placement_of_each_kind():
    from pipelines.engines import Engines, placement_for
    from pipelines.options import AgentOptions
    from processors import catalogue

    assert placement_for(AgentOptions()) is catalogue.IN_PROCESS
    placement = placement_for(AgentOptions(ray=RayOptions(enabled=True, engines=["tts"])))
    assert placement.name == "ray" and placement.where("tts") == "ray" and placement.where("stt") == "in-process"
    row = placement.row("stt", "pocketsphinx")
    assert row is catalogue.entry("stt", "pocketsphinx")  # not remote: the catalogue's own row
    remote = placement_for(AgentOptions(ray=RayOptions(enabled=True))).row("stt", "pocketsphinx")
    assert remote.name == "pocketsphinx" and remote.per_session is not None and remote.service is row.service
    assert remote.load is not row.load and "Ray Serve" in remote.summary
    assert Engines().describe()["tts"]["placement"] == "in-process"
