"""`vital serve`: run the service under uvicorn, draining on SIGTERM.

Shutdown, step by step (docs/serving.md):
1. SIGTERM: `/ready` answers 503 at once and `vital_ready` drops to 0; requests are still served for
   `VITAL_DRAIN_SECONDS` (default 15 s) so load balancers notice and stop routing here. A second
   signal ends that wait early; Ctrl-C (SIGINT) skips it.
2. uvicorn stops listening and closes idle connections; every request whose headers arrived is
   answered (its body still has `VITAL_BODY_TIMEOUT_S` to arrive); later ones get 503 `draining`.
3. The engine drains its queue, the lifespan ends, the process exits with status 0.

Only light modules are imported at registration: `vital --help` must stay fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from typing import TYPE_CHECKING

from vital_core.cli import CLIError

if TYPE_CHECKING:
    import uvicorn

    from server.service import Service

log = logging.getLogger("vital.server")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital serve`."""
    p = sub.add_parser(
        "serve",
        help="serve /answer and /explain over HTTP",
        description="Serve a bundle over HTTP. Every option can also be set as an environment variable "
        "VITAL_<NAME> (or in .env); command-line options win. SIGTERM drains: /ready fails at once, "
        "requests are served for VITAL_DRAIN_SECONDS (default 15; a second signal ends it), then every "
        "accepted request is answered and the process exits.",
    )
    p.add_argument("--bundle", help="bundle directory (VITAL_BUNDLE; default bundles/vital-tiny)")
    p.add_argument("--host", help="bind address (VITAL_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (VITAL_PORT; default 8000)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (VITAL_DEVICE)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (VITAL_DTYPE)")
    p.add_argument("--api-key", help="require this bearer key on model routes and docs (VITAL_API_KEY)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (VITAL_BATCHING=false)")
    p.add_argument(
        "--drain-seconds", type=float, help="readiness-failed wait after SIGTERM (VITAL_DRAIN_SECONDS)"
    )
    p.add_argument("--log-level", help="debug, info, warning, error (VITAL_LOG_LEVEL)")
    r = p.add_argument_group(
        "Ray Serve",
        "Run the same app as a Ray Serve deployment on a running Ray cluster, one model per replica, "
        "autoscaled by VITAL_RAY_* settings (docs/scaling.md). Needs the optional extra: pip install -e '.[ray]'. "
        "--host/--port are then those of Ray's HTTP proxy.",
    )
    r.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="deploy on the Ray cluster at ADDRESS (HOST:PORT of its GCS, or auto) instead of starting uvicorn",
    )
    r.add_argument(
        "--ray-replicas",
        type=int,
        metavar="N",
        help="a fixed number of replicas instead of autoscaling (VITAL_RAY_NUM_REPLICAS)",
    )
    r.add_argument(
        "--ray-proxy-location",
        choices=["HeadOnly", "EveryNode"],
        default="HeadOnly",
        help="where Ray runs its HTTP proxy: the head node only, or every node (behind your load balancer)",
    )
    r.add_argument(
        "--ray-detach",
        action="store_true",
        help="deploy and exit, leaving the app running on the cluster (remove it with `serve shutdown` or "
        "by running without --ray-detach and stopping that)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start uvicorn on the app; SIGTERM/SIGINT fail readiness, drain, then exit."""
    import uvicorn
    from pydantic import ValidationError

    from server.app import create_app
    from server.logs import configure
    from server.settings import Settings

    overrides = {
        "bundle": args.bundle,
        "host": args.host,
        "port": args.port,
        "device": args.device,
        "dtype": args.dtype,
        "api_key": args.api_key,
        "log_level": args.log_level,
        "drain_seconds": args.drain_seconds,
    }
    if args.no_batching:
        overrides["batching"] = False
    if args.ray_replicas is not None:
        if args.ray is None:
            raise CLIError("--ray-replicas needs --ray ADDRESS")
        overrides["ray_num_replicas"] = args.ray_replicas
    if args.ray is None and args.ray_detach:
        raise CLIError("--ray-detach needs --ray ADDRESS")
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise CLIError(f"invalid settings: {exc}") from exc
    if not (settings.bundle / "vital.yaml").is_file():
        raise CLIError(
            f"{settings.bundle} is not a bundle (no vital.yaml); build one with `make bundle` or "
            "`vital bundle init`, or set VITAL_BUNDLE"
        )
    configure(settings.log_level)
    if args.ray is not None:
        return run_on_ray(args, settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=header_timeout_protocol(settings.header_timeout_s),
        log_config=None,
        access_log=False,
        # After the drain window: every accepted request has its body deadline plus its answer deadline.
        timeout_graceful_shutdown=settings.body_timeout_s + settings.request_timeout_s + 5.0,
    )
    server = draining_server(config, app.state.service, settings.drain_seconds)
    log.info(f"VITAL serving {settings.bundle} on http://{settings.host}:{settings.port} (docs at /docs)")
    server.run()
    return 0


def run_on_ray(args: argparse.Namespace, settings) -> int:
    """Deploy the app on a Ray cluster with Ray Serve and wait; SIGTERM/SIGINT delete it (each replica gets
    VITAL_RAY_GRACEFUL_SHUTDOWN_S to finish its accepted requests), then exit. With --ray-detach: deploy,
    print where it serves, exit."""
    import threading

    from server.ray_common import connect

    ray = connect(args.ray)
    from ray import serve

    from server.ray_app import APP_NAME, build_application

    try:
        app = build_application(settings, int(ray.cluster_resources().get("GPU", 0)))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    serve.start(
        http_options={"host": settings.host, "port": settings.port, "location": args.ray_proxy_location}
    )
    proxy = _serve_proxy_address()
    if proxy is not None and proxy != (settings.host, settings.port):
        raise CLIError(
            f"Ray Serve already runs on this cluster with its HTTP proxy at {proxy[0]}:{proxy[1]}, not "
            f"{settings.host}:{settings.port}; pass --host {proxy[0]} --port {proxy[1]}, or stop it first "
            "(`serve shutdown`)"
        )
    log.info("deploying %s on Ray at %s (waits until every replica has loaded it)", settings.bundle, args.ray)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as exc:  # DEPLOY_FAILED: a replica could not start (the bundle, resources)
        raise CLIError(f"Ray Serve could not deploy the app: {exc}") from exc
    where = f"http://{settings.host}:{settings.port}"
    if args.ray_detach:
        print(
            f"VITAL serving {settings.bundle} on Ray Serve at {where} (app {APP_NAME!r}); it keeps running on the cluster",
            flush=True,
        )
        return 0
    print(
        f"VITAL serving {settings.bundle} on Ray Serve at {where} (docs at /docs); SIGTERM or Ctrl-C removes it",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("signal: deleting the app; replicas finish their accepted requests first")
    serve.delete(APP_NAME)
    if not serve.status().applications:  # nothing else on this Serve: stop its proxy and controller too
        serve.shutdown()
    ray.shutdown()
    return 0


def _serve_proxy_address() -> tuple[str, int] | None:
    """(host, port) of the running Serve's HTTP proxy: a Serve started earlier keeps its own, and serve.start
    only warns that new options are not applied."""
    try:
        from ray.serve.context import _get_global_client

        cfg = _get_global_client().http_config
        return cfg.host, int(cfg.port)
    except Exception:  # a private API: without it, do not second-guess Ray
        return None


def draining_server(config: uvicorn.Config, service: Service, drain_seconds: float) -> uvicorn.Server:
    """A uvicorn.Server whose first exit signal fails readiness and keeps serving `drain_seconds`
    (checked on uvicorn's own 0.1 s tick: no timer thread), then shuts down gracefully; a second
    signal ends the wait at once, a third forces the exit."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_until: float | None = None

        def handle_exit(self, sig: int, frame: object) -> None:
            # Ctrl-C at a terminal skips the window (no load balancer to tell); SIGTERM waits.
            if self.drain_until is None and drain_seconds > 0 and sig != signal.SIGINT:
                self.drain_until = time.monotonic() + drain_seconds
                service.start_draining()
                log.info(
                    "signal %s: not ready; serving %g s more, then draining (again: now)", sig, drain_seconds
                )
                return
            self.finish(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_until is not None and not self.should_exit and time.monotonic() >= self.drain_until:
                self.finish(None, None)
            return await super().on_tick(counter)

        def finish(self, sig: int | None, frame: object) -> None:
            if not self.should_exit:
                service.close_intake()
                log.info("draining: finishing accepted requests")
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            # A drained shutdown is a normal exit (status 0): do not re-raise the signal afterwards.
            self._captured_signals.clear()

    return DrainingServer(config)


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head within
    `seconds` of connecting or of its previous response (slow-header clients)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timeout()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timeout()

        def _arm_header_timeout(self) -> None:
            waiting_for = self.cycle  # a new request replaces self.cycle
            self.loop.call_later(seconds, self._header_timeout, waiting_for)

        def _header_timeout(self, waiting_for: object) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is waiting_for and idle and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol
