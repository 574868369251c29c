"""`create_app(settings)`: the FastAPI app, its lifespan (model loading, draining) and middleware.

Nothing is created at import time. The model loads in the background after start-up so `/health`
answers at once and `/ready` says 503 until the bundle is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from server.errors import CODES, install_handlers
from server.logs import request_id_var
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("vital.server")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
KNOWN_ROUTES = {"/answer", "/explain", "/health", "/ready", "/info", "/metrics", "/docs", "/openapi.json",
                "/v1/chat/completions", "/v1/models", "/ui/"}  # fmt: skip


@dataclass
class Service:
    """Everything the routes need, on `app.state.service`."""

    settings: Settings
    metrics: Metrics
    model: Any = None  # VitalModel once loaded
    engine: Any = None  # Engine once loaded
    explainer: Any = None  # Explainer, created lazily
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    device: str = "cpu"
    started: float = field(default_factory=time.time)
    explain_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def set_ready(self, value: bool) -> None:
        self.ready = value
        self.metrics.ready.set(1 if value and not self.draining else 0)

    def start_draining(self) -> None:
        """Fail readiness and refuse new work; accepted requests still finish."""
        self.draining = True
        self.metrics.ready.set(0)
        if self.engine is not None:
            self.engine.draining = True


def default_loader(settings: Settings, device: str):  # noqa: ANN201 - returns a VitalModel
    """Load the bundle for answering: no scaffolding, LoRA merged."""
    from vital_core.bundle import load_bundle

    return load_bundle(settings.bundle, device=device, dtype=settings.dtype, scaffold=False)


def create_app(settings: Settings | None = None, *, loader: Callable | None = None) -> FastAPI:
    """Build the app. `loader(settings, device) -> VitalModel` overrides bundle loading (tests)."""
    settings = settings or Settings()
    metrics = Metrics()
    service = Service(settings=settings, metrics=metrics, device=settings.resolved_device())
    load = loader or default_loader

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_load(service, load))
        try:
            yield
        finally:
            service.start_draining()
            if not task.done():
                task.cancel()
            if service.engine is not None:
                await service.engine.stop()
            log.info("shut down cleanly")

    from server.routes import router

    app = FastAPI(
        title="VITAL",
        version=_version(),
        summary="Latent-space reasoning for medical images: answers and explanations over REST.",
        description=(
            "POST an image (PNG, JPEG, DICOM, NIfTI) and a question to `/answer`; `/explain` adds, per "
            "latent step, the decoded reasoning sentence, a heatmap and the nearest reference patches. "
            'Errors are always `{"error": {"code", "message"}}`.'
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    install_handlers(app, on_error=lambda code, status: metrics.errors.labels(code, str(status)).inc())
    app.include_router(router)
    app.add_middleware(RequestContext, service=service)
    from fastapi.staticfiles import StaticFiles

    from server import openai_api

    openai_api.install(app)  # /v1 routes; its error-shape middleware wraps RequestContext
    app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "static" / "ui", html=True), name="ui")
    return app


async def _load(service: Service, load: Callable) -> None:
    from server.engine import Engine

    s = service.settings
    try:
        t0 = time.perf_counter()
        model = await asyncio.to_thread(load, s, service.device)
        cfg = model.config
        if s.k_default is not None:
            cfg.latent.k_default = s.k_default
        if s.k_max is not None:
            cfg.latent.k_max = s.k_max
        cfg.latent.k_default = min(cfg.latent.k_default, cfg.latent.k_max)
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
        )
        service.engine.start()
        if service.draining:
            service.engine.draining = True
        service.metrics.model_info.info(
            {
                "model": cfg.name,
                "preset": cfg.preset,
                "k_default": str(cfg.latent.k_default),
                "k_max": str(cfg.latent.k_max),
                "device": service.device,
                "dtype": cfg.backbone.dtype,
                "version": _version(),
            }
        )
        if s.explain and s.explain_preload:
            from server.explain import get_explainer

            await get_explainer(service)
        service.set_ready(True)
        log.info("model loaded", extra={"model": cfg.name, "seconds": round(time.perf_counter() - t0, 2)})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        service.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("loading the bundle failed")


def _version() -> str:
    from vital_core import __version__

    return __version__


class RequestContext:
    """Pure ASGI middleware: request id, body-size limit, in-flight gauge, latency metrics, access log."""

    def __init__(self, app, service: Service):  # noqa: ANN001 - ASGI app
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _SAFE_ID.match(rid) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        m = self.service.metrics
        limit = self.service.settings.max_body_bytes
        status_holder: dict = {"status": 500}
        t0 = time.perf_counter()

        async def send_wrapper(message):  # noqa: ANN001
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        received = 0

        async def receive_wrapper():  # noqa: ANN202
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    from server.errors import APIError

                    raise APIError(413, f"request body exceeds {limit} bytes", "body_too_large")
            return message

        m.in_flight.inc()
        try:
            declared = headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                await _send_error(send_wrapper, 413, "body_too_large", f"request body exceeds {limit} bytes")
                m.errors.labels("body_too_large", "413").inc()
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            # Unhandled: log it here, while the request id is still set, and answer with it (a 500 from
            # the outer error middleware would carry neither the header nor the id in its log line).
            log.exception("unhandled error", extra={"method": scope.get("method"), "path": path})
            m.errors.labels("internal_error", "500").inc()
            if status_holder.get("started"):
                raise
            await _send_error(send_wrapper, 500, "internal_error",
                              f"internal server error; see the server log for request {rid}")  # fmt: skip
        finally:
            m.in_flight.dec()
            dt = time.perf_counter() - t0
            status = str(status_holder["status"])
            m.requests.labels(route, status).inc()
            m.request_latency.labels(route, status).observe(dt)
            if route not in ("/metrics", "/health", "/ready"):
                log.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "status": int(status),
                        "ms": round(1000 * dt, 2),
                    },
                )
            request_id_var.reset(token)


async def _send_error(send, status: int, code: str, message: str) -> None:  # noqa: ANN001
    import json

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["CODES", "Service", "create_app"]
