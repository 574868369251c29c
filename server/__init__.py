"""server: the FastAPI inference service — /answer, /explain, health, metrics, batching."""

from server.app import create_app
from server.settings import Settings

__all__ = ["Settings", "create_app"]
