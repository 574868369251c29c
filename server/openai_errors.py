"""OpenAI's error object for the /v1 routes: the `type` for a status, the body, and a middleware that gives
errors made outside the /v1 handlers (413 from the body limit, 404/405 from routing) the same shape."""

from __future__ import annotations

import json


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(status: int, code: str, message: str, param: str | None = None) -> dict:
    """The error body in OpenAI's shape."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


# -- error shape for /v1 responses made outside these handlers -------------------------------------
class OpenAIErrorShape:
    """ASGI middleware: under /v1/, rewrite `{"error": {"code", "message"}}` bodies made outside the /v1
    handlers (413 from the body limit, 404/405 from routing) into OpenAI's error object; status kept."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        held: dict = {}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and ctype.startswith(b"application/json"):
                    held["start"], held["body"] = message, b""
                    return
                return await send(message)
            if message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                start = held.pop("start")
                body = _reshape(held.pop("body"), int(start["status"]))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                return await send({"type": "http.response.body", "body": body})
            return await send(message)

        return await self.app(scope, receive, send_wrapper)


def _reshape(body: bytes, status: int) -> bytes:
    try:
        doc = json.loads(body)
        err = doc["error"]
        if "type" in err:
            return body  # already OpenAI's shape
        return json.dumps(openai_error(status, err.get("code"), err.get("message", ""))).encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        return body
