"""pydicom's complaints about a file, kept with the decode that caused them, without global warning state.

pydicom raises every warning through one function, `pydicom.misc.warn_and_log`: it logs the message on the
`pydicom` logger, then calls `warnings.warn`. Wrapping a decode in `warnings.catch_warnings()` to silence
the second half is not safe in a server: `catch_warnings` saves and restores the process-global filter
list, so two requests decoding in two threads restore each other's filters (a suppression leaks into the
rest of the process, or another thread's is undone). Instead, inside `pydicom_messages()`:

* the log record goes where it always went (in the server: the JSON request log, with the request id),
  and its message is also appended to the list the context manager yields (the decoder puts it in
  `ModelImage.info["dicom_warnings"]`);
* the duplicate `warnings.warn` from `pydicom.misc` is dropped for this context only.

Both are keyed by a `contextvars.ContextVar`, so each thread (and each asyncio task) sees only its own
decode; outside `pydicom_messages()` pydicom logs and warns exactly as before. Nothing touches
`warnings.filters` or `warnings.showwarning`. The two hooks (a handler on the `pydicom` logger and a
stand-in for the `warnings` name inside `pydicom.misc`) are installed once, under a lock.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_CAPTURE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("pydicom_messages", default=None)
_LOCK = threading.Lock()
_INSTALLED = False


class _Collect(logging.Handler):
    """Appends each `pydicom` log record's message to the current context's list (if one is open)."""

    def emit(self, record: logging.LogRecord) -> None:
        messages = _CAPTURE.get()
        if messages is not None:
            messages.append(record.getMessage())


class _ContextWarnings:
    """Stands in for the `warnings` module inside `pydicom.misc`: `warn` is dropped while a
    `pydicom_messages()` context is open in this thread/task (the message was logged and collected),
    and passed to the real `warnings.warn` otherwise; every other attribute is the real module's."""

    def __getattr__(self, name: str):
        return getattr(warnings, name)

    def warn(self, message, category=None, stacklevel: int = 1, source=None) -> None:
        if _CAPTURE.get() is None:
            warnings.warn(message, category, stacklevel + 1, source)


def _install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    with _LOCK:
        if _INSTALLED:
            return
        import pydicom.misc

        logging.getLogger("pydicom").addHandler(_Collect())
        if pydicom.misc.warnings is warnings:
            pydicom.misc.warnings = _ContextWarnings()
        _INSTALLED = True


@contextmanager
def pydicom_messages() -> Iterator[list[str]]:
    """Collect pydicom's warnings raised in this thread/task into the yielded list (in order)."""
    _install()
    messages: list[str] = []
    token = _CAPTURE.set(messages)
    try:
        yield messages
    finally:
        _CAPTURE.reset(token)


def summary(messages: list[str], limit: int = 1000) -> str:
    """The distinct messages in order, joined with ' | ' and cut to `limit` characters."""
    text = " | ".join(dict.fromkeys(m.strip() for m in messages if m.strip()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["pydicom_messages", "summary"]
