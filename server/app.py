"""`create_app(settings)`: the FastAPI app, its lifespan (model loading, draining) and middleware.

Nothing is created at import time. The model loads in the background after start-up so `/health`
answers at once and `/ready` says 503 until the bundle is loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import openai_api
from server.docs import install_docs
from server.engine import Engine
from server.errors import CODES, APIError, install_handlers
from server.logs import request_id_var
from server.metrics import Metrics
from server.routes import router
from server.service import Service
from server.settings import Settings
from vital_core import __version__
from vital_core.bundle import load_bundle
from vital_core.model import VitalModel

log = logging.getLogger("vital.server")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
KNOWN_ROUTES = {
    "/answer",
    "/explain",
    "/health",
    "/ready",
    "/info",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/v1/chat/completions",
    "/v1/models",
    "/ui/",
}
PROBES = ("/metrics", "/health", "/ready")  # neither counted in flight nor logged per request
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection before the response"


def default_loader(settings: Settings, device: str) -> VitalModel:
    """Load the bundle for answering: no scaffolding, LoRA merged."""
    return load_bundle(settings.bundle, device=device, dtype=settings.dtype, scaffold=False)


def apply_k_settings(model: VitalModel, settings: Settings) -> None:
    """The deployment's K overrides (VITAL_K_DEFAULT, VITAL_K_MAX) on a loaded model's config."""
    latent = model.config.latent
    if settings.k_default is not None:
        latent.k_default = settings.k_default
    if settings.k_max is not None:
        latent.k_max = settings.k_max
    latent.k_default = min(latent.k_default, latent.k_max)


def create_app(
    settings: Settings | None = None,
    *,
    loader: Callable[[Settings, str], VitalModel] | None = None,
    wait_for_load: bool = False,
) -> FastAPI:
    """Build the app. `loader(settings, device) -> VitalModel` overrides bundle loading (tests).

    By default the model loads in the background and `/ready` tells when it is done. With `wait_for_load`
    (a Ray Serve replica, server/ray_app.py) the lifespan's start-up waits for it and fails when loading
    fails, so Ray routes no request to a replica before its model is loaded and restarts one that cannot
    load."""
    settings = settings or Settings()
    metrics = Metrics()
    service = Service(settings=settings, metrics=metrics, device=settings.resolved_device())
    load = loader or default_loader

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_load(service, load))
        if wait_for_load:
            await task
            if service.load_error is not None:
                raise RuntimeError(f"loading the bundle {settings.bundle} failed: {service.load_error}")
        try:
            yield
        finally:
            service.close_intake()
            if not task.done():
                task.cancel()
            if service.engine is not None:
                await service.engine.stop()
            log.info("shut down cleanly")

    app = FastAPI(
        title="VITAL",
        version=__version__,
        summary="Latent-space reasoning for medical images: answers and explanations over REST.",
        description=(
            "POST an image (PNG, JPEG, DICOM, NIfTI) and a question to `/answer`; `/explain` adds, per "
            "latent step, the decoded reasoning sentence, a heatmap and the nearest reference patches. "
            'Errors are always `{"error": {"code", "message"}}`. When the server has an API key, send it '
            "as `Authorization: Bearer <key>` (the Authorize button)."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    install_handlers(app, on_error=lambda code, status: metrics.errors.labels(code, str(status)).inc())
    app.include_router(router)
    install_docs(app, settings)
    app.add_middleware(RequestContext, service=service)
    openai_api.install(app)  # /v1 routes; its error-shape middleware wraps RequestContext
    app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "static" / "ui", html=True), name="ui")
    return app


async def _load(service: Service, load: Callable[[Settings, str], VitalModel]) -> None:
    s = service.settings
    try:
        t0 = time.perf_counter()
        model = await asyncio.to_thread(load, s, service.device)
        cfg = model.config
        apply_k_settings(model, s)
        service.model = model
        service.engine = Engine(
            model,
            service.metrics,
            max_batch_size=s.max_batch_size if s.batching else 1,
            max_wait_ms=s.max_wait_ms if s.batching else 0.0,
            max_queue=s.max_queue,
            device=service.device,
            step_mode=s.step_mode,
            prefix_cache_bytes=s.prefix_cache_bytes,
            static_cache_bytes=s.static_cache_bytes,
        )
        service.engine.start()
        if service.intake_closed is not None:
            service.engine.begin_drain(service.intake_closed)
        service.metrics.model_info.info(
            {
                "model": cfg.name,
                "preset": cfg.preset,
                "k_default": str(cfg.latent.k_default),
                "k_max": str(cfg.latent.k_max),
                "device": service.device,
                "dtype": cfg.backbone.dtype,
                "version": __version__,
            }
        )
        if s.explain_preload:
            await _warm_explain(service)
        service.set_ready(True)
        log.info("model loaded", extra={"model": cfg.name, "seconds": round(time.perf_counter() - t0, 2)})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        service.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("loading the bundle failed")


async def _warm_explain(service: Service) -> None:
    """Warm /explain before readiness; a failure is logged and leaves /answer served (/explain then
    answers 503 with the reason)."""
    try:
        seconds = await service.warm_explain()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("warming /explain failed; /answer is served, /explain will retry on first use")
        return
    if seconds is not None:
        log.info("explain warmed up", extra={"seconds": round(seconds, 3)})


class RequestContext:
    """Pure ASGI middleware: request id, arrival time, body size and time limits, in-flight gauge,
    latency metrics, access log.

    - `scope["state"]["arrived"]`: when the request's headers arrived (perf_counter); a request that
      arrived before intake closed (the end of the drain window) is served, later ones get 503.
    - The body must arrive within `body_timeout_s` of the headers (408 `body_timeout` otherwise), so a
      stalled client cannot hold a connection, or the shutdown, forever.
    - An oversize body (413) is read and discarded up to `max_discard_bytes` before the answer, so the
      client, still sending, reads the 413 instead of a connection reset.
    - A client that disconnects before its response is counted with status 499, not as a 500.
    """

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        scope.setdefault("state", {})["arrived"] = t0
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _SAFE_ID.match(rid) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        m = self.service.metrics
        settings = self.service.settings
        limit = settings.max_body_bytes
        status = 500
        started = False
        gone = False  # the client disconnected before the response started
        received = 0
        body_deadline = t0 + settings.body_timeout_s

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        body_done = False

        async def receive_wrapper() -> Message:
            nonlocal received, gone, body_done
            if body_done:  # only the body has a deadline (a later receive waits for a disconnect)
                message = await receive()
                gone = gone or (message["type"] == "http.disconnect" and not started)
                return message
            try:
                message = await asyncio.wait_for(receive(), max(0.0, body_deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                raise APIError(
                    408,
                    f"request body not received within {settings.body_timeout_s:g} s",
                    "body_timeout",
                    {"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise APIError(413, f"request body exceeds {limit} bytes", "body_too_large")
            elif message["type"] == "http.disconnect" and not started:
                gone = True
            return message

        probe = route in PROBES
        if not probe:
            m.in_flight.inc()
        try:
            declared = headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                await _refuse_oversize(receive, send_wrapper, int(declared), limit, settings, body_deadline)
                m.errors.labels("body_too_large", "413").inc()
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except ClientDisconnect:
            gone = True
        except Exception:
            # Unhandled: log it here, while the request id is still set, and answer with it (a 500 from
            # the outer error middleware would carry neither the header nor the id in its log line).
            log.exception("unhandled error", extra={"method": scope.get("method"), "path": path})
            m.errors.labels("internal_error", "500").inc()
            if started:
                raise
            await _send_error(
                send_wrapper,
                500,
                "internal_error",
                f"internal server error; see the server log for request {rid}",
            )
        finally:
            if not probe:
                m.in_flight.dec()
            dt = time.perf_counter() - t0
            if gone and (not started or status >= 500):
                status = CLIENT_CLOSED
                m.errors.labels("client_closed_request", str(CLIENT_CLOSED)).inc()
            m.requests.labels(route, str(status)).inc()
            m.request_latency.labels(route, str(status)).observe(dt)
            if not probe:
                log.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "status": status,
                        "ms": round(1000 * dt, 2),
                    },
                )
            request_id_var.reset(token)


async def _refuse_oversize(
    receive: Receive, send: Send, declared: int, limit: int, settings: Settings, deadline: float
) -> None:
    """413 for a declared-oversize body: read and discard it first (up to a bound and the body
    deadline), so a client that writes its whole body before reading sees the 413, not a reset."""
    if declared <= settings.max_discard_bytes:
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                break
            more = message["type"] == "http.request" and message.get("more_body", False)
    await _send_error(send, 413, "body_too_large", f"request body exceeds {limit} bytes", close=True)


async def _send_error(send: Send, status: int, code: str, message: str, *, close: bool = False) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["CODES", "Service", "create_app"]
