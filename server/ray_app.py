"""Ray Serve: the same FastAPI app as `vital serve`, one model per replica (`vital serve --ray ADDRESS`, or
`serve run server.ray_app:app_builder bundle=DIR`). The optional extra `.[ray]`; nothing else imports this.

Each replica builds the app with `create_app(settings, wait_for_load=True)`: the same routes, auth, limits,
error shapes, batching engine and `/metrics` as `vital serve`, and Ray routes nothing to a replica before its
bundle is loaded (its start-up waits for the load and fails when the load fails; Ray then retries it).
`check_health` fails when loading failed or the batching loop stopped, so Ray replaces the replica.

Metrics: a request's `/metrics` lands on one replica, so a scrape of the Serve port sees one replica at a time.
Every replica therefore copies its `vital_*` samples every `VITAL_RAY_METRICS_INTERVAL_S` into Ray's metrics
(`ray.util.metrics.Gauge`, one per sample name, tagged with the replica's id), which each node's Ray metrics
agent exports on its `--metrics-export-port` as `ray_vital_...`. Prometheus scrapes every node there and
renames them back (docker/prometheus.ray.yml): `vital_requests_total{replica=...}` and the rest, the names
`vital serve` exports, one series per replica; the Grafana dashboard sums over them.

Settings (docs/scaling.md): `VITAL_RAY_NUM_REPLICAS` fixes the count; otherwise the deployment autoscales
between `VITAL_RAY_MIN_REPLICAS` and `VITAL_RAY_MAX_REPLICAS` on ongoing requests per replica
(`VITAL_RAY_TARGET_ONGOING_REQUESTS`, with `VITAL_RAY_UPSCALE_DELAY_S` / `VITAL_RAY_DOWNSCALE_DELAY_S`);
`VITAL_RAY_NUM_GPUS` / `VITAL_RAY_NUM_CPUS` per replica; `VITAL_RAY_GRACEFUL_SHUTDOWN_S` for draining.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray import serve
from ray.serve import Application

from server.app import create_app
from server.settings import Settings

log = logging.getLogger("vital.ray")
APP_NAME = "vital"
DEPLOYMENT_NAME = "VitalReplica"


class MetricsBridge:
    """Copies one prometheus_client registry into `ray.util.metrics` gauges on a daemon thread."""

    def __init__(self, registry: Any, replica: str, interval_s: float) -> None:
        self.registry = registry
        self.replica = replica
        self.interval_s = interval_s
        self._gauges: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vital-ray-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.copy()
            except Exception:  # a metrics hiccup must never take the replica down
                log.exception("copying metrics to Ray failed")

    def copy(self) -> int:
        """One pass: every sample (except `_created`) set on its gauge. Returns the samples copied."""
        from ray.util.metrics import Gauge

        n = 0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                keys = tuple(sorted(sample.labels)) + ("replica",)
                entry = self._gauges.get(sample.name)
                if entry is None:
                    entry = (Gauge(sample.name, family.documentation, tag_keys=keys), keys)
                    self._gauges[sample.name] = entry
                gauge, want = entry
                if want != keys:  # a family's label names are fixed; skip anything else
                    continue
                gauge.set(float(sample.value), tags={**sample.labels, "replica": self.replica})
                n += 1
        return n


class VitalReplica:
    """One Serve replica: one model and its batching engine, behind the app `vital serve` runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = None
        self.bridge: MetricsBridge | None = None

    def __serve_build_asgi_app__(self):
        app = create_app(self.settings, wait_for_load=True)
        self.service = app.state.service
        self.bridge = MetricsBridge(
            self.service.metrics.registry, replica_id(), self.settings.ray_metrics_interval_s
        )
        self.bridge.start()
        return app

    def check_health(self) -> None:
        """Ray's periodic health check: raising marks the replica unhealthy and Ray replaces it."""
        svc = self.service
        if svc is None:
            return
        if svc.load_error:
            raise RuntimeError(f"the bundle failed to load: {svc.load_error}")
        failure = svc.engine.failure() if svc.engine is not None else None
        if failure:
            raise RuntimeError(failure)

    def __del__(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()


def replica_id() -> str:
    """This replica's unique id (the `replica` label of its metrics)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (tests of the bridge)
        return "local"


def replica_resources(settings: Settings, cluster_gpus: int = 0) -> dict[str, float]:
    """`ray_actor_options` of a replica: its CPUs and GPUs (one GPU each on a GPU cluster unless set)."""
    gpus = settings.ray_num_gpus
    if gpus is None:
        gpus = (
            1.0 if cluster_gpus and (settings.device == "auto" or settings.device.startswith("cuda")) else 0.0
        )
    return {"num_cpus": settings.ray_num_cpus, "num_gpus": gpus}


def deployment_options(settings: Settings, cluster_gpus: int = 0) -> dict[str, Any]:
    """`serve.deployment(...)` options from the settings: replicas or autoscaling, resources, draining."""
    opts: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": replica_resources(settings, cluster_gpus),
        "max_ongoing_requests": settings.ray_max_ongoing_requests,
        "graceful_shutdown_timeout_s": settings.ray_graceful_shutdown_s,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
    }
    if settings.ray_num_replicas is not None:
        opts["num_replicas"] = settings.ray_num_replicas
    else:
        if settings.ray_min_replicas > settings.ray_max_replicas:
            raise ValueError(
                f"VITAL_RAY_MIN_REPLICAS ({settings.ray_min_replicas}) exceeds VITAL_RAY_MAX_REPLICAS "
                f"({settings.ray_max_replicas})"
            )
        opts["autoscaling_config"] = {
            "min_replicas": settings.ray_min_replicas,
            "initial_replicas": max(1, settings.ray_min_replicas),
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": settings.ray_target_ongoing_requests,
            "upscale_delay_s": settings.ray_upscale_delay_s,
            "downscale_delay_s": settings.ray_downscale_delay_s,
        }
    return opts


def build_application(settings: Settings, cluster_gpus: int = 0) -> Application:
    """The Serve application: `VitalReplica` behind the FastAPI app, with the settings' options. The bundle
    path is made absolute (replicas may start in another directory); every node needs it at that path."""
    settings = settings.model_copy(update={"bundle": settings.bundle.resolve()})
    ingress = serve.ingress()(VitalReplica)
    return serve.deployment(**deployment_options(settings, cluster_gpus))(ingress).bind(settings)


def app_builder(args: dict[str, str]) -> Application:
    """For `serve run server.ray_app:app_builder bundle=DIR ray_num_replicas=2 ...` (and a RayService's
    `import_path`): settings from the environment (VITAL_*) with these arguments on top."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    return build_application(Settings(**args), gpus)
