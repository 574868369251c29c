"""API errors: one JSON shape, `{"error": {"code": str, "message": str}}`, for every failure."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("vital.server")

# HTTP status → default machine-readable code
CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "queue_full",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class APIError(Exception):
    """An error with a status, a stable code and a human message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    """The one error body shape."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install_handlers(app: FastAPI, on_error: Callable[[str, int], None] | None = None) -> None:
    """Route every exception type to the JSON error shape (never HTML, never a bare 500 for input)."""

    def reply(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
        if on_error is not None:
            on_error(code, status)
        return error_response(status, code, message, headers)

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return reply(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return reply(422, "invalid_request", describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return reply(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return reply(500, "internal_error", "internal server error; see the server log")


def describe_validation(errors: list[dict]) -> str:
    """Pydantic errors → one readable line: `k: Input should be ...; question: Field required`."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)
