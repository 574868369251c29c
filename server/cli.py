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
