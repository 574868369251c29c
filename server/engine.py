"""The batching engine: gathers concurrent requests into batches that share K and runs them through
the one vital_core loop, one batch at a time, on a single worker thread.

- A request waits at most `max_wait_ms` after the first request of its batch arrived; a batch holds at
  most `max_batch_size` requests, all with the same K (so no latent step is wasted on masking).
- Greedy decoding is row-independent, so a batch decodes up to the largest `max_new_tokens` asked and
  each request is cut to its own cap: every result equals what the request gets alone.
- The queue is bounded: beyond `max_queue` waiting requests, `submit` fails fast with 429.
- `drain()` stops intake (503) and waits until every accepted request has its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from server.errors import APIError
from server.metrics import Metrics
from vital_core.model import VitalModel
from vital_core.prefix_cache import PrefixCache
from vital_core.static_cache import StaticRunner
from vital_core.timing import StageTimer

log = logging.getLogger("vital.engine")


@dataclass
class Job:
    """One request waiting for (or in) a batch."""

    image: Image.Image
    question: str
    k: int
    max_new_tokens: int
    request_id: str
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


@dataclass
class Result:
    """What the engine returns for one request."""

    text: str
    tokens: list[int]
    k: int
    timings_ms: dict[str, float]
    batch_size: int


class Engine:
    """Owns the model's worker thread and the request queue."""

    def __init__(
        self,
        model: VitalModel,
        metrics: Metrics,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        device: str = "cpu",
        step_mode: str = "dynamic",
        prefix_cache_bytes: int = 0,
    ):
        self.model = model
        # issue 16: static-cache steps (CUDA graphs where asked and available) and the image-prefix cache
        self.runner = (
            StaticRunner(model.core, mode="graphs" if step_mode == "graphs" else "eager")
            if step_mode != "dynamic"
            else None
        )
        self.prefix_cache = (
            PrefixCache(prefix_cache_bytes, f"{model.device}:{model.core.dtype}")
            if prefix_cache_bytes
            else None
        )
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.device = device
        self.draining = False
        self._pending: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vital-model")
        self._task: asyncio.Task | None = None
        self.running = 0  # requests in the batch on the model thread now

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="vital-batcher")

    async def drain(self) -> None:
        """Refuse new requests and wait for every accepted one to finish."""
        self.draining = True
        while self._pending or not self._idle.is_set():
            self._wakeup.set()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Drain, then stop the loop and the worker thread."""
        await self.drain()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    # -- intake ----------------------------------------------------------------------------------
    async def submit(
        self, image: Image.Image, question: str, k: int, max_new_tokens: int, request_id: str, timeout: float
    ) -> Result:
        """Queue one request and wait for its result (APIError 429/503/504)."""
        if self.draining:
            raise APIError(503, "server is shutting down; retry on another replica", "draining")
        if len(self._pending) >= self.max_queue:
            raise APIError(
                429, f"queue full ({self.max_queue} waiting); retry later", "queue_full", {"Retry-After": "1"}
            )
        job = Job(image, question, k, max_new_tokens, request_id, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self.metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError as exc:
            job.cancelled = True
            raise APIError(504, f"no answer within {timeout:g} s", "timeout") from exc

    async def run_exclusive(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the model thread between batches (for /explain)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the loop --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._pending[0]
            deadline = first.enqueued + self.max_wait
            while self._count(first.k) < self.max_batch_size and not self.draining:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.k)
            self.metrics.queue_depth.set(len(self._pending))
            if not batch:
                continue
            self._idle.clear()
            self.running = len(batch)
            try:
                results = await loop.run_in_executor(self._executor, self._run, batch)
                for job, res in zip(batch, results):
                    if not job.future.done():
                        job.future.set_result(res)
            except Exception as exc:  # a model failure fails its batch, not the server
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                self.running = 0
                self._idle.set()

    def _count(self, k: int) -> int:
        return sum(1 for j in self._pending if j.k == k and not j.cancelled)

    def _take(self, k: int) -> list[Job]:
        """Remove up to max_batch_size live jobs with this K, oldest first; drop cancelled ones."""
        batch, keep = [], deque()
        while self._pending:
            job = self._pending.popleft()
            if job.cancelled:
                continue
            if job.k == k and len(batch) < self.max_batch_size:
                batch.append(job)
            else:
                keep.append(job)
        self._pending = keep
        return batch

    def _run(self, batch: list[Job]) -> list[Result]:
        """Worker thread: one forward pass for the whole batch."""
        started = time.perf_counter()
        timer = StageTimer(self.device)
        cap = max(j.max_new_tokens for j in batch)
        answers = self.model.answer([j.image for j in batch], [j.question for j in batch], k=batch[0].k,
                                    max_new_tokens=cap, timer=timer, runner=self.runner,
                                    prefix_cache=self.prefix_cache)  # fmt: skip
        stages = timer.totals_ms()
        m = self.metrics
        m.batch_size.observe(len(batch))
        for stage, ms in stages.items():
            m.stage_latency.labels(stage).observe(ms / 1000.0)
        results = []
        for job, ans in zip(batch, answers):
            tokens = ans.tokens[: job.max_new_tokens]
            text = ans.text if len(tokens) == len(ans.tokens) else self._decode(tokens)
            wait = started - job.enqueued
            m.queue_wait.observe(wait)
            m.latent_steps.inc(ans.k)
            m.generated_tokens.inc(len(tokens))
            timings = {"queue": 1000.0 * wait, **stages}
            if ans.prefix_hit is not None:
                (m.prefix_hits if ans.prefix_hit else m.prefix_misses).inc()
                m.prefix_bytes.set(self.prefix_cache.bytes)
                timings["prefix_cache_hit"] = float(ans.prefix_hit)
            results.append(Result(text, tokens, ans.k, timings, len(batch)))
        return results

    def _decode(self, tokens: list[int]) -> str:
        return self.model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
