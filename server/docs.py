"""API docs served from the package: `/openapi.json`, Swagger UI at `/docs`, ReDoc at `/redoc`.

No CDN: the Swagger UI and ReDoc bundles come from the `fastapi-offline` package's static folder
(MIT-licensed copies of swagger-ui-dist and redoc), so the pages work on an offline hospital network.

When an API key is set the three pages need it too (unless `VITAL_DOCS_PUBLIC=true`): send it as
`Authorization: Bearer <key>`, or — so a browser can open the page — as the password of HTTP Basic
auth (any user name; the browser asks). The static JS/CSS bundles stay open: they are public code.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from server.errors import APIError
from server.settings import Settings

ASSETS = "/docs-assets"
DOC_ROUTES = ("/openapi.json", "/docs", "/redoc")


def assets_dir() -> Path:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js."""
    return Path(str(files("fastapi_offline") / "static"))


def key_matches(authorization: str, settings: Settings, *, basic: bool = False) -> bool:
    """True when no key is set, or the header carries it (Bearer; also Basic's password if `basic`)."""
    if settings.api_key is None:
        return True
    expected = settings.api_key.get_secret_value().encode()
    scheme, _, given = authorization.partition(" ")
    given = given.strip()
    if scheme.lower() == "basic" and basic:
        try:
            given = base64.b64decode(given, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.encode(), expected)


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Add the three doc routes (key-protected when a key is set) and the static assets."""
    protect = settings.api_key is not None and not settings.docs_public

    def check(request: Request) -> None:
        if protect and not key_matches(request.headers.get("authorization", ""), settings, basic=True):
            raise APIError(
                401,
                "the API docs need the API key: 'Authorization: Bearer <key>', or the key as a Basic password",
                "unauthorized",
                {"WWW-Authenticate": 'Basic realm="VITAL API docs", Bearer'},
            )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        check(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        check(request)
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} — API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        check(request)
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} — ReDoc",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")
