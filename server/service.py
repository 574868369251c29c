"""The serving state every route reads: settings, metrics, the model, the engine, the explainer.

`Service` sits above the parts it holds (`server.engine`, `server.explain`): it imports them, they never
import it (tests/test_layout.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from server import explain
from server.engine import Engine
from server.errors import APIError
from server.explain import Explainer
from server.metrics import Metrics
from server.settings import Settings
from vital_core.model import VitalModel

log = logging.getLogger("vital.explain")


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

    def explain_unavailable(self) -> tuple[int, str, str] | None:
        """(status, code, message) when /explain cannot be served, else None."""
        return explain.unavailable_reason(self.settings, loaded=self.explainer is not None)

    async def get_explainer(self) -> Explainer:
        """The explainer, loading it on first use (once, under a lock, on a helper thread)."""
        reason = self.explain_unavailable()
        if reason:
            raise APIError(reason[0], reason[2], reason[1])
        if self.explainer is not None:
            return self.explainer
        async with self.explain_lock:
            if self.explainer is None:
                try:
                    # Not the model thread: /answer batches keep running while the modules load.
                    self.explainer = await asyncio.to_thread(
                        explain.load_explainer, self.loaded_model(), self.settings, self.device
                    )
                except Exception as exc:
                    log.exception("loading the explanation modules failed")
                    raise APIError(
                        503, f"explanation modules failed to load: {exc}", "explain_unavailable"
                    ) from exc
        return self.explainer

    async def warm_explain(self) -> float | None:
        """Load the /explain modules and run one tiny explanation on the model thread (before /ready
        turns 200), so the first request costs what later ones do. Returns the warm-up's seconds, or
        None when /explain is off or unavailable here (the routes then say why)."""
        if self.explain_unavailable() is not None:
            return None
        explainer = await self.get_explainer()
        cfg = self.loaded_model().config.latent
        k = min(max(1, cfg.k_default), cfg.k_max)
        # On the model thread but outside the queue: no request can arrive before /ready, and the
        # request metrics (queue wait, batch sizes) stay about requests.
        return await self.loaded_engine().run_exclusive(explainer.warm_up, k)
