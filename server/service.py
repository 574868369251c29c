"""The serving state every route reads: settings, metrics, the model, the engine, the explainer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.metrics import Metrics
from server.settings import Settings
from vital_core.model import VitalModel

if TYPE_CHECKING:  # annotations only
    from server.engine import Engine
    from server.explain import Explainer


@dataclass
class Service:
    """Everything the routes need, on `app.state.service`."""

    settings: Settings
    metrics: Metrics
    model: VitalModel | None = None
    engine: Engine | None = None
    explainer: Explainer | None = None
    ready: bool = False
    drain_started: float | None = None
    """perf_counter time of the shutdown signal: /ready fails from then on; requests are still served."""
    intake_closed: float | None = None
    """perf_counter time the drain window ended: requests arriving later get 503 `draining`."""
    load_error: str | None = None
    device: str = "cpu"
    started: float = field(default_factory=time.time)
    explain_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def draining(self) -> bool:
        """True from the shutdown signal on (readiness fails)."""
        return self.drain_started is not None

    def set_ready(self, value: bool) -> None:
        """Mark the model loaded (or not); the gauge also reflects draining."""
        self.ready = value
        self.metrics.ready.set(1 if value and not self.draining else 0)

    def start_draining(self) -> None:
        """Shutdown signal: fail readiness at once so load balancers stop routing here; keep serving."""
        if self.drain_started is None:
            self.drain_started = time.perf_counter()
        self.metrics.ready.set(0)

    def close_intake(self) -> None:
        """End of the drain window: refuse requests that arrive from now on; earlier ones still finish."""
        self.start_draining()
        if self.intake_closed is None:
            self.intake_closed = time.perf_counter()
        if self.engine is not None:
            self.engine.begin_drain(self.intake_closed)

    def refuses(self, arrived: float | None) -> bool:
        """True when a request whose headers arrived at `arrived` (perf_counter) must get 503 draining."""
        return self.intake_closed is not None and (arrived is None or arrived >= self.intake_closed)

    def loaded_model(self) -> VitalModel:
        """The serving model (only called once ready)."""
        if self.model is None:
            raise RuntimeError("the model is not loaded")
        return self.model

    def loaded_engine(self) -> Engine:
        """The engine (only called once ready)."""
        if self.engine is None:
            raise RuntimeError("the engine is not running")
        return self.engine
