"""`vital serve`: run the service under uvicorn, with draining on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import threading

log = logging.getLogger("vital.server")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital serve`."""
    p = sub.add_parser(
        "serve",
        help="serve /answer and /explain over HTTP",
        description="Serve a bundle over HTTP. Every option can also be set as an environment variable "
        "VITAL_<NAME> (or in .env); command-line options win.",
    )
    p.add_argument("--bundle", help="bundle directory (VITAL_BUNDLE; default bundles/vital-tiny)")
    p.add_argument("--host", help="bind address (VITAL_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (VITAL_PORT; default 8000)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (VITAL_DEVICE)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (VITAL_DTYPE)")
    p.add_argument("--api-key", help="require this bearer key on model routes (VITAL_API_KEY)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (VITAL_BATCHING=false)")
    p.add_argument("--log-level", help="debug, info, warning, error (VITAL_LOG_LEVEL)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start uvicorn on the app; SIGTERM/SIGINT fail readiness, drain, then exit."""
    import uvicorn
    from pydantic import ValidationError

    from server.app import create_app
    from server.logs import configure
    from server.settings import Settings
    from vital_core.cli import CLIError

    overrides = {
        "bundle": args.bundle, "host": args.host, "port": args.port, "device": args.device, "dtype": args.dtype,
        "api_key": args.api_key, "log_level": args.log_level,
    }  # fmt: skip
    if args.no_batching:
        overrides["batching"] = False
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise CLIError(f"invalid settings: {exc}") from exc
    if not (settings.bundle / "vital.yaml").is_file():
        raise CLIError(f"{settings.bundle} is not a bundle (no vital.yaml); build one with `make bundle` or "
                       "`vital bundle init`, or set VITAL_BUNDLE")  # fmt: skip
    configure(settings.log_level)
    app = create_app(settings)
    server = _draining_server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                       timeout_graceful_shutdown=max(settings.request_timeout_s, 1.0) + settings.drain_seconds),
        on_drain=app.state.service.start_draining,
        drain_seconds=settings.drain_seconds,
    )  # fmt: skip
    log.info(f"VITAL serving {settings.bundle} on http://{settings.host}:{settings.port} (docs at /docs)")
    server.run()
    return 0


def _draining_server(config, on_drain, drain_seconds: float):  # noqa: ANN001, ANN202
    """A uvicorn.Server whose exit signal first fails readiness, waits `drain_seconds`, then shuts down
    gracefully (uvicorn stops accepting, in-flight requests finish, then the lifespan drains the engine)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):  # noqa: ANN001
            if getattr(self, "_draining", False):
                return self._exit(sig, frame)  # a second signal: stop waiting
            self._draining = True
            on_drain()
            log.info("signal %s: not ready, draining", sig)
            if drain_seconds > 0:
                threading.Timer(drain_seconds, self._exit, (sig, frame)).start()
            else:
                self._exit(sig, frame)

        def _exit(self, sig, frame):  # noqa: ANN001
            super().handle_exit(sig, frame)
            # A drained shutdown is a normal exit (status 0): do not re-raise the signal afterwards.
            self._captured_signals.clear()

    return DrainingServer(config)
