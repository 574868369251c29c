"""An OpenAI-compatible chat-completions client for the teacher: bounded concurrency is the caller's (one
task per slot); this client adds a requests-per-minute limiter, timeouts, and retries with exponential
back-off and jitter on 429, 5xx, timeouts and connection errors (honouring `Retry-After`)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class TeacherSettings(BaseSettings):
    """Teacher endpoint and request policy; every field reads `VITAL_TEACHER_<NAME>` from the environment."""

    model_config = SettingsConfigDict(env_prefix="VITAL_TEACHER_", extra="ignore")

    base_url: str = "https://api.openai.com/v1"
    """Base URL of an OpenAI-compatible API; requests go to `{base_url}/chat/completions`."""
    model: str = ""
    """Teacher model name (required for real runs)."""
    api_key: SecretStr | None = None
    """Bearer token; prefer the environment variable to a command-line flag."""
    timeout_s: float = 120.0
    """Per-request timeout in seconds."""
    concurrency: int = 4
    """Requests in flight at once."""
    rpm: float = 60.0
    """Request starts per minute, spaced evenly; 0 = unlimited."""
    http_retries: int = 6
    """Retries of one request after 429/5xx/timeout/connection errors."""
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    temperature: float | None = None
    """Sent only when set (some reasoning models accept only their default)."""
    max_tokens: int | None = None
    """Sent only when set."""
    json_mode: bool = False
    """Send `response_format: {"type": "json_object"}` (when the endpoint supports it)."""


class TeacherError(Exception):
    """A teacher request failed."""


class FatalTeacherError(TeacherError):
    """Failures no retry can fix for any sample (bad key, unknown model or URL): stop the run."""


class RequestRejected(TeacherError):
    """The endpoint rejected this one request (a 4xx other than 401/403/404/429): the sample fails."""


class RetriesExhausted(TeacherError):
    """Transient failures outlasted the retries: the sample stays pending for the next run."""


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (no bursts); rpm <= 0 means no limit."""

    def __init__(self, rpm: float) -> None:
        self.interval = 60.0 / rpm if rpm > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Sleep until this caller's slot."""
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        await asyncio.sleep(start - now)


def backoff_delay(retry: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential back-off with jitter: min(cap, base * 2**retry) scaled by U(0.5, 1), at least Retry-After."""
    delay = min(cap, base * 2**retry) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class TeacherClient:
    """Async chat-completions calls with rate limiting and transient-error retries."""

    def __init__(self, settings: TeacherSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        headers = {"Content-Type": "application/json"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport,
        )
        self._limiter = RateLimiter(settings.rpm)
        self.requests = 0
        """HTTP requests sent, retries included."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def payload(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The request body for `messages`."""
        body: dict[str, Any] = {"model": self.settings.model, "messages": messages}
        if self.settings.temperature is not None:
            body["temperature"] = self.settings.temperature
        if self.settings.max_tokens is not None:
            body["max_tokens"] = self.settings.max_tokens
        if self.settings.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, messages: list[dict[str, Any]], sample_id: str = "", attempt: int = 0) -> str:
        """The assistant's reply text; retries transient failures, raises a `TeacherError` otherwise."""
        s = self.settings
        headers = {"X-Vital-Sample-Id": quote(sample_id, safe=""), "X-Vital-Attempt": str(attempt)}
        body = self.payload(messages)
        last, retry_after = "", None
        for retry in range(s.http_retries + 1):
            if retry:
                await asyncio.sleep(backoff_delay(retry - 1, s.backoff_base_s, s.backoff_max_s, retry_after))
                retry_after = None
            await self._limiter.wait()
            self.requests += 1
            try:
                resp = await self._http.post("/chat/completions", json=body, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.info("teacher %s (sample %s), retry %d", last, sample_id, retry + 1)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last, retry_after = f"HTTP {resp.status_code}", _seconds(resp.headers.get("retry-after"))
                log.info("teacher HTTP %d (sample %s), retry %d", resp.status_code, sample_id, retry + 1)
                continue
            if resp.status_code in (401, 403, 404):
                raise FatalTeacherError(f"HTTP {resp.status_code} from {resp.request.url}: {resp.text[:300]}")
            if resp.status_code >= 400:
                raise RequestRejected(f"HTTP {resp.status_code}: {resp.text[:300]}")
            try:
                return reply_text(resp.json())
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                last = f"unreadable response body ({exc})"
                continue
        raise RetriesExhausted(f"sample {sample_id}: gave up after {s.http_retries + 1} tries; last: {last}")


def reply_text(body: dict[str, Any]) -> str:
    """The text of `choices[0].message.content` (a string, or a list of text parts)."""
    content = body["choices"][0]["message"]["content"]
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}")
    return content


def _seconds(value: str | None) -> float | None:
    """A numeric `Retry-After` header value in seconds (HTTP dates are ignored)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None
