"""server: the FastAPI inference service — /answer, /explain, health, metrics, batching.

`create_app` and `Settings` load on first use (PEP 562), so registering `vital serve` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"create_app": "server.app", "Settings": "server.settings"}

if TYPE_CHECKING:
    from server.app import create_app
    from server.settings import Settings


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'server' has no attribute {name!r}")


__all__ = ["Settings", "create_app"]
