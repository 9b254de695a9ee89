"""What a user sets to run the TTS and STT engines on Ray Serve (``duplex serve --ray``, ``DUPLEX_RAY__*``).

Kept free of Ray so settings load without it. ``RayOptions`` is composed into ``pipelines.options.AgentOptions`` (and
so into ``agent.settings.Settings``); ``DeploymentOptions`` is one deployment's shape: replicas (or an autoscaling
range), resources per replica and how many requests a replica takes at once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RemoteKind = Literal["tts", "stt"]


class DeploymentOptions(BaseModel):
    """One engine deployment: ``replicas`` fixed, or autoscaled from ``replicas`` to ``max_replicas`` on the number of
    requests in flight per replica (``target_ongoing_requests``). A request is one utterance being synthesised (TTS)
    or transcribed (STT)."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1)  # fixed count; with max_replicas, the minimum
    max_replicas: int | None = Field(None, ge=1)  # above replicas: autoscale up to this many
    target_ongoing_requests: float = Field(4.0, gt=0.0)  # autoscaling aims at this many requests per replica
    max_ongoing_requests: int = Field(10, ge=1)  # a replica takes at most this many at once; the rest queue
    gpus: float = Field(0.0, ge=0.0)  # GPUs per replica (fractions share one GPU between replicas)
    cpus: float = Field(1.0, ge=0.0)  # CPUs per replica (Ray's logical CPUs: what the scheduler reserves)

    @model_validator(mode="after")
    def _range(self) -> DeploymentOptions:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None and self.max_replicas > self.replicas

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``ray.serve.Deployment.options``."""
        out: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.cpus, "num_gpus": self.gpus},
        }
        if self.autoscaling:
            out["autoscaling_config"] = {
                "min_replicas": self.replicas,
                "initial_replicas": self.replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            out["num_replicas"] = self.replicas
        return out


class RayOptions(BaseModel):
    """Whether and where the engines run on Ray Serve, and each deployment's shape.

    ``address``: None = ``RAY_ADDRESS`` if set, else a new local Ray instance started by this process (and stopped
    with it); ``"auto"`` = the cluster ``ray start`` made on this machine; ``"host:6379"`` = a cluster this machine
    has joined as a node. ``deploy``: ``auto`` deploys an engine's application when the cluster does not run it yet and
    otherwise uses the running one (so many agent processes share one deployment); ``always`` replaces it with this
    process's settings; ``never`` only uses a deployment someone else made (a Serve config, a RayService).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    address: str | None = None
    engines: list[RemoteKind] = Field(default_factory=lambda: ["tts", "stt"])  # the kinds that run on Ray
    app_prefix: str = Field("duplex", pattern=r"^[A-Za-z0-9_-]{1,40}$")  # application = <prefix>-<kind>-<engine>
    deploy: Literal["auto", "always", "never"] = "auto"
    request_timeout_s: float = Field(30.0, gt=0.0)  # no answer (or next chunk) within this: the replica is gone
    retries: int = Field(2, ge=0)  # tries on another replica when one dies before answering
    voice_cache: int = Field(64, ge=1)  # voices each TTS replica keeps ready
    local_cpus: int | None = Field(None, ge=1)  # CPUs of a local instance started here (None: all of them)
    tts: DeploymentOptions = DeploymentOptions()
    stt: DeploymentOptions = DeploymentOptions()

    def deployment(self, kind: RemoteKind) -> DeploymentOptions:
        return self.tts if kind == "tts" else self.stt

    def app_name(self, kind: str, engine: str) -> str:
        return f"{self.app_prefix}-{kind}-{engine}"
