"""``RayPlacement``: the engine catalogue's rows, made to run on Ray Serve.

``pipelines.engines.load_engines`` asks a placement which engine to use (``choose``) and for the row to load it with
(``row``). The in-process placement (``processors.catalogue.IN_PROCESS``) answers with the catalogue as it is; this
one answers, for the kinds in ``RayOptions.engines``, with the same row whose ``load`` deploys (or finds) the
engine's Serve application and returns a remote engine (``processors.ray_serve.remote``), and whose ``per_session``
gives a session its own engine on the replicas. The replicas load the engine with the row's own ``load``; the
service, the options and everything else stay the catalogue's.

Applications are named ``<app_prefix>-<kind>-<engine>`` with one deployment, ``engine``. ``auto`` is judged where the
replicas will run: ``catalogue.choose`` runs in a Ray task with a replica's GPUs.

``app(args)`` builds the same application from a Serve config file (KubeRay's RayService ``serveConfigV2``):

    applications:
      - name: duplex-tts-qwen3
        import_path: processors.ray_serve.cluster:app
        args: {kind: tts, engine: qwen3, options: {model: Qwen/Qwen3-TTS-12Hz-0.6B-Base}}
        deployments: [{name: engine, num_replicas: 2, ray_actor_options: {num_gpus: 1}}]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

from processors import catalogue
from processors.catalogue import AUTO, Choice, EngineEntry, ModelUnavailable

from .options import RayOptions

log = logging.getLogger("duplex.ray_serve")

DEPLOYMENT = "engine"
STARTUP_TIMEOUT_S = 900.0  # a replica's first answer, model download and load included
CONSTRUCTOR_RETRIES = 3  # a replica that cannot load its engine is retried this often before the deploy fails
GRACEFUL_SHUTDOWN_S = 5.0  # a replica being replaced finishes its utterances for this long


def _group(kind: str) -> Any:
    return catalogue.TTSOptions if kind == "tts" else catalogue.STTOptions


def replica_options(options: Any, engine: str) -> dict[str, Any]:
    """What a replica loads with: the kind's settings group without the agent-side choices (default voice and
    language, interim interval), so agents that differ only in those share one deployment."""
    agent_side = (set(catalogue.TTSChoice.model_fields) | set(catalogue.STTChoice.model_fields)) - {"engine"}
    values = {k: v for k, v in options.model_dump(mode="json").items() if k not in agent_side}
    return {**values, "engine": engine}


def _choose_on_node(kind: str, options: dict[str, Any], device: str | None) -> tuple[str, str]:
    """``catalogue.choose`` on a Ray node (run as a task with a replica's resources)."""
    choice = catalogue.choose(kind, _group(kind).model_validate(options), device)  # type: ignore[arg-type]
    return choice.engine, choice.reason


def deployment(kind: str, engine: str, options: dict[str, Any], device: str | None, ray_options: RayOptions) -> Any:
    """The Serve application of one engine, shaped by ``ray_options``."""
    from ray import serve

    from .replica import EngineReplica

    shape = ray_options.deployment(kind).serve_options()  # type: ignore[arg-type]
    return (
        serve.deployment(EngineReplica, name=DEPLOYMENT)
        .options(
            **shape,
            max_constructor_retry_count=CONSTRUCTOR_RETRIES,
            graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
        )
        .bind(kind, engine, options, device, ray_options.voice_cache)
    )


def app(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files (see module docstring): ``kind``, ``engine``, ``options`` (the
    kind's settings group, e.g. ``TTSOptions`` fields), ``device`` and ``voice_cache`` (optional)."""
    kind, engine = args["kind"], args["engine"]
    catalogue.entry(kind, engine)  # unknown names fail here
    options = replica_options(_group(kind).model_validate(args.get("options", {})), engine)
    ray_options = RayOptions(voice_cache=args.get("voice_cache", RayOptions().voice_cache))
    return deployment(kind, engine, options, args.get("device"), ray_options)


class RayPlacement:
    """Rows that run on Ray Serve (see module docstring). ``close()`` stops a Ray instance this process started; a
    cluster it joined keeps its deployments for the other agent processes."""

    name = "ray"

    def __init__(self, options: RayOptions):
        self.options = options
        self.started_here = False
        self._connected = False
        self._driver_thread: threading.Thread | None = None
        self._release_driver = threading.Event()

    # --- connection ------------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect this process to Ray (unless it is already), start Serve for handles. Ray ties a driver to the thread
        that connected it: once that thread ends, the next Ray call ends the process (Ray 2.60). ``duplex serve``
        loads engines in a thread that ends, so away from the main thread the connection is made in a thread of its
        own that lives until ``close``."""
        if self._connected:
            return
        import ray
        from ray import serve

        if not ray.is_initialized():
            if threading.current_thread() is threading.main_thread():
                self._init()
            else:
                done: list[BaseException | None] = []

                def hold() -> None:
                    try:
                        self._init()
                        done.append(None)
                    except BaseException as e:
                        done.append(e)
                        return
                    self._release_driver.wait()

                self._driver_thread = threading.Thread(target=hold, name="duplex-ray-driver", daemon=True)
                self._driver_thread.start()
                while not done:
                    time.sleep(0.05)
                if done[0] is not None:
                    raise done[0]
        serve.start(proxy_location="Disabled")  # handles only; an existing Serve keeps its own settings
        self._connected = True

    def _init(self) -> None:
        import ray

        address = self.options.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            log.info("Ray: starting a local instance")
            ray.init(address="local", num_cpus=self.options.local_cpus, include_dashboard=False)
            self.started_here = True
        else:
            log.info("Ray: connecting to %s", address)
            ray.init(address=address)

    def close(self) -> None:
        """Stop a Ray instance this process started (its replicas with it); a cluster's deployments stay."""
        import ray

        try:
            if self.started_here:
                ray.shutdown()  # the whole local instance, Serve's actors included (serve.shutdown waits up to 30 s)
        finally:
            self.started_here = self._connected = False
            self._release_driver.set()

    # --- the placement interface -----------------------------------------------------------------------------------
    def remote(self, kind: str) -> bool:
        return kind in self.options.engines

    def where(self, kind: str) -> str:
        return self.name if self.remote(kind) else catalogue.IN_PROCESS.name

    def choose(self, kind: catalogue.Kind, options: Any, device: str | None = None) -> Choice:
        if not self.remote(kind) or getattr(options, "engine", AUTO) != AUTO:
            choice = catalogue.choose(kind, options, device)
            return Choice(choice.engine, choice.reason + (" (on Ray Serve)" if self.remote(kind) else ""))
        import ray

        self.connect()
        gpus = self.options.deployment(kind).gpus  # type: ignore[arg-type]
        task = ray.remote(num_cpus=0, num_gpus=gpus)(_choose_on_node).remote(
            kind, options.model_dump(mode="json"), device
        )
        try:
            engine, reason = ray.get(task, timeout=self.options.request_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(task, force=True)
            raise ModelUnavailable(
                f"no Ray node offered {gpus:g} GPU(s) for a {kind.upper()} replica within "
                f"{self.options.request_timeout_s:g} s"
            ) from None
        except ray.exceptions.RayTaskError as e:
            raise ModelUnavailable(str(getattr(e, "cause", e))) from None
        return Choice(engine, f"{reason} (judged on a Ray node with {gpus:g} GPU(s))")

    def row(self, kind: catalogue.Kind, name: str) -> EngineEntry:
        base = catalogue.entry(kind, name)
        if not self.remote(kind):
            return base
        return dataclasses.replace(
            base,
            summary=f"{base.summary} (on Ray Serve)",
            load=lambda options, device: self.load(kind, name, options, device),
            per_session=(lambda loaded: loaded.session()) if base.per_session is not None else None,
        )

    # --- loading ---------------------------------------------------------------------------------------------------
    def load(self, kind: str, name: str, options: Any, device: str | None) -> Any:
        """The remote engine for ``name``, its application deployed first unless the cluster runs it already."""
        from ray import serve

        from .remote import RemoteSTTEngine, RemoteTTSEngine
        from .replica import options_digest

        self.connect()
        app_name = self.options.app_name(kind, name)
        values = replica_options(options, name)
        running = app_name in serve.status().applications
        if self.options.deploy == "never" and not running:
            raise ModelUnavailable(
                f"the Ray cluster runs no application {app_name!r} (deploy it, e.g. from a Serve config, or set "
                "DUPLEX_RAY__DEPLOY=auto)"
            )
        if self.options.deploy == "always" or not running:
            log.info("Ray: deploying %s (%s)", app_name, self.options.deployment(kind))  # type: ignore[arg-type]
            try:
                serve.run(
                    deployment(kind, name, values, device, self.options),
                    name=app_name,
                    route_prefix=None,
                    blocking=False,
                )
            except RuntimeError as e:  # DEPLOY_FAILED: the replicas' constructor error is in the message
                raise ModelUnavailable(f"the Ray Serve application {app_name!r} failed to deploy: {e}") from e
        else:
            log.info("Ray: using the running application %s", app_name)
        handle = serve.get_deployment_handle(DEPLOYMENT, app_name=app_name)
        try:
            info = handle.info.remote().result(timeout_s=STARTUP_TIMEOUT_S)
        except Exception as e:
            raise ModelUnavailable(f"no replica of {app_name!r} answered: {type(e).__name__}: {e}") from e
        if info.options_digest != options_digest(kind, name, values, device):
            log.warning(
                "Ray: the running %s was deployed with other settings than this process's; it is used as it is "
                "(DUPLEX_RAY__DEPLOY=always replaces it)",
                app_name,
            )
        common = {"request_timeout_s": self.options.request_timeout_s, "retries": self.options.retries}
        if kind == "tts":
            return RemoteTTSEngine(handle, info, **common)
        return RemoteSTTEngine(handle, info, **common)
