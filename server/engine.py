"""The batching engine: one bounded queue in front of the model's single worker thread.

Every route that uses the model goes through it, so one bound, one timeout, one drain and one set of
metrics cover them all. Two kinds of job share the queue:

- *answer* jobs are gathered into batches that share K and run through the one vital_core loop.
  A request waits at most `max_wait_ms` after the first request of its batch arrived; a batch holds
  at most `max_batch_size` requests. Greedy decoding is row-independent, so a batch decodes up to the
  largest `max_new_tokens` asked and each request is cut to its own cap: every result equals what the
  request gets alone.
- *call* jobs (/explain) run alone, as one function call on the model thread.

An answer job may pass a `stream` queue: its answer tokens are put there (from the model thread, with
`loop.call_soon_threadsafe`) at each decode step, as the loop's stop check sees them; the result still
carries the whole answer. Jobs without a queue add no work to the loop. When every job of a batch
went away (disconnect, timeout), decoding stops early.

The kinds take turns: when both are waiting, a call job runs after an answer batch and an answer
batch after a call job, each the oldest of its kind, so a burst of one route cannot make the other
wait behind all of it.

The queue is bounded: beyond `max_queue` waiting jobs, submitting fails fast with 429. A job not done
within its timeout gets 504 and is dropped if it has not started. `drain()` stops intake (503 for
requests that arrived after the drain began) and waits until every accepted job has its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from PIL import Image

from server.errors import APIError
from server.metrics import Metrics
from vital_core.model import VitalModel
from vital_core.prefix_cache import PrefixCache
from vital_core.static_cache import StaticRunner
from vital_core.timing import StageTimer

log = logging.getLogger("vital.engine")
T = TypeVar("T")
_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One request waiting for (or in) a batch."""

    kind: Literal["answer", "call"]
    request_id: str
    future: asyncio.Future
    image: Image.Image | None = None
    question: str = ""
    k: int = 0
    max_new_tokens: int = 0
    call: Callable[[], Any] | None = None
    """call jobs: the function to run alone on the model thread."""
    stream: asyncio.Queue | None = None
    """answer jobs that stream: receives each answer token id (int) as it is decoded."""
    loop: asyncio.AbstractEventLoop | None = None
    streamed: int = 0
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    seq: int = field(default_factory=lambda: next(_ids))

    @property
    def batch_key(self) -> tuple[str, int]:
        """Jobs with equal keys may share a batch: answers by K; calls never."""
        return ("answer", self.k) if self.kind == "answer" else ("call", self.seq)


@dataclass
class Result:
    """What the engine returns for one answer request."""

    text: str
    tokens: list[int]
    k: int
    timings_ms: dict[str, float]
    batch_size: int


def make_runner(model: VitalModel, step_mode: str, static_cache_bytes: int | None) -> StaticRunner | None:
    """The latent/decode step runner of a `step_mode` (None: the dynamic cache), as the server runs it."""
    if step_mode == "dynamic":
        return None
    mode = "graphs" if step_mode == "graphs" else "eager"
    return StaticRunner(model.core, mode=mode, max_bytes=static_cache_bytes)


def make_prefix_cache(model: VitalModel, prefix_cache_bytes: int) -> PrefixCache | None:
    """The image-prefix KV cache the server keeps (None when its budget is 0)."""
    if not prefix_cache_bytes:
        return None
    return PrefixCache(prefix_cache_bytes, f"{model.device}:{model.core.dtype}")


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
        static_cache_bytes: int | None = None,
    ):
        self.model = model
        # issue 16: static-cache steps (CUDA graphs where asked and available) and the image-prefix cache
        self.runner = make_runner(model, step_mode, static_cache_bytes)
        self.prefix_cache = make_prefix_cache(model, prefix_cache_bytes)
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.device = device
        self.drain_started: float | None = None
        """perf_counter time the drain began; requests that arrived before it are still served."""
        self._pending: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vital-model")
        self._task: asyncio.Task | None = None
        self.running = 0  # jobs in the batch on the model thread now
        self._last_kind: str | None = None

    @property
    def queued(self) -> int:
        """Jobs waiting for a batch."""
        return len(self._pending)

    @property
    def draining(self) -> bool:
        """True once the drain began."""
        return self.drain_started is not None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="vital-batcher")

    def failure(self) -> str | None:
        """Why the batching loop is no longer running (it ended or raised), or None while it runs."""
        if self._task is None or not self._task.done():
            return None
        if self._task.cancelled():
            return "the batching loop was cancelled"
        exc = self._task.exception()
        return f"the batching loop stopped: {type(exc).__name__}: {exc}" if exc else "the batching loop ended"

    def begin_drain(self, at: float | None = None) -> None:
        """Refuse requests that arrive from now on (those that arrived earlier are still accepted)."""
        if self.drain_started is None:
            self.drain_started = time.perf_counter() if at is None else at

    async def drain(self) -> None:
        """Refuse new requests and wait for every accepted one to finish."""
        self.begin_drain()
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
        self,
        image: Image.Image,
        question: str,
        k: int,
        max_new_tokens: int,
        request_id: str,
        timeout: float,
        arrived: float | None = None,
        stream: asyncio.Queue | None = None,
    ) -> Result:
        """Queue one answer request and wait for its result (APIError 429/503/504).

        `arrived` (perf_counter) is when the request's headers arrived: a request that arrived before
        the drain began is still accepted. `stream`: a queue that receives the answer's token ids
        (ints, at most `max_new_tokens`) while it is decoded, before the result.
        """
        job = Job("answer", request_id, self._future(), image, question, k, max_new_tokens, stream=stream)
        if stream is not None:
            job.loop = asyncio.get_running_loop()
        return await self._enqueue(job, timeout, arrived)

    async def submit_call(
        self, fn: Callable[[], T], request_id: str, timeout: float, arrived: float | None = None
    ) -> T:
        """Queue `fn` to run alone on the model thread (for /explain); same bound, timeout and drain."""
        job = Job("call", request_id, self._future(), call=fn)
        return await self._enqueue(job, timeout, arrived)

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the model thread now, outside the queue: the start-up warm-up of /explain (before
        /ready, so nothing waits behind it), and tests that hold the thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, job: Job, timeout: float, arrived: float | None) -> Any:
        if self.drain_started is not None and (arrived is None or arrived >= self.drain_started):
            raise APIError(503, "server is shutting down; retry on another replica", "draining")
        if len(self._pending) >= self.max_queue:
            raise APIError(
                429, f"queue full ({self.max_queue} waiting); retry later", "queue_full", {"Retry-After": "1"}
            )
        self._pending.append(job)
        self.metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError as exc:
            job.cancelled = True
            raise APIError(504, f"no answer within {timeout:g} s", "timeout") from exc
        except asyncio.CancelledError:
            job.cancelled = True  # the caller went away: do not run it if it has not started
            raise

    # -- the loop --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._next_head()
            self._last_kind = first.kind
            if first.kind == "answer":
                await self._gather(first)
            batch = self._take(first.batch_key)
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

    async def _gather(self, first: Job) -> None:
        """Wait (up to max_wait after `first` arrived) for more answer jobs with its K."""
        deadline = first.enqueued + self.max_wait
        while self._count(first.batch_key) < self.max_batch_size and not self.draining:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _next_head(self) -> Job:
        """The job the next batch starts from: the oldest one of the kind that did not run last, if any."""
        return next((j for j in self._pending if j.kind != self._last_kind), self._pending[0])

    def _drop_cancelled(self) -> None:
        if any(j.cancelled for j in self._pending):
            self._pending = deque(j for j in self._pending if not j.cancelled)
            self.metrics.queue_depth.set(len(self._pending))

    def _count(self, key: tuple[str, int]) -> int:
        return sum(1 for j in self._pending if j.batch_key == key and not j.cancelled)

    def _take(self, key: tuple[str, int]) -> list[Job]:
        """Remove up to max_batch_size live jobs with this key, oldest first; drop cancelled ones."""
        batch, keep = [], deque()
        while self._pending:
            job = self._pending.popleft()
            if job.cancelled:
                continue
            if job.batch_key == key and len(batch) < self.max_batch_size:
                batch.append(job)
            else:
                keep.append(job)
        self._pending = keep
        return batch

    def _run(self, batch: list[Job]) -> list[Any]:
        """Worker thread: one forward pass for the batch's live jobs, or the one call job.

        Jobs whose caller gave up (504, disconnect) while the batch waited for the thread are
        skipped here; their result slot is None.
        """
        started = time.perf_counter()
        live = [j for j in batch if not j.cancelled]
        for job in live:
            self.metrics.queue_wait.observe(started - job.enqueued)
        if not live:
            return [None] * len(batch)
        if live[0].kind == "call":
            return [live[0].call()]
        done = dict(zip(map(id, live), self._run_answers(live, started)))
        return [done.get(id(j)) for j in batch]

    def _run_answers(self, batch: list[Job], started: float) -> list[Result]:
        timer = StageTimer(self.device)
        cap = max(j.max_new_tokens for j in batch)
        images, questions = [j.image for j in batch], [j.question for j in batch]
        answers = self.model.answer(
            images,
            questions,
            k=batch[0].k,
            max_new_tokens=cap,
            timer=timer,
            runner=self.runner,
            prefix_cache=self.prefix_cache,
            on_tokens=_forwarder(batch),
        )
        stages = timer.totals_ms()
        m = self.metrics
        m.batch_size.observe(len(batch))
        if self.runner is not None:
            m.static_cache_bytes.set(self.runner.nbytes)
        for stage, ms in stages.items():
            m.stage_latency.labels(stage).observe(ms / 1000.0)
        results = []
        for job, ans in zip(batch, answers):
            tokens = ans.tokens[: job.max_new_tokens]
            text = ans.text if len(tokens) == len(ans.tokens) else self._decode(tokens)
            wait_ms = 1000.0 * (started - job.enqueued)
            m.latent_steps.inc(ans.k)
            m.generated_tokens.inc(len(tokens))
            timings = {"queue": wait_ms, **stages}
            if ans.prefix_hit is not None:
                (m.prefix_hits if ans.prefix_hit else m.prefix_misses).inc()
                m.prefix_bytes.set(self.prefix_cache.bytes)
                timings["prefix_cache_hit"] = float(ans.prefix_hit)
            results.append(Result(text, tokens, ans.k, timings, len(batch)))
        return results

    def _decode(self, tokens: list[int]) -> str:
        return self.model.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _forwarder(batch: list[Job]) -> Callable[[list[int | None]], bool] | None:
    """The decode loop's per-step callback for a batch with streaming jobs (None when none streams).

    Runs on the model thread: each streaming row's new token goes to its queue on the event loop
    (thread-safe), up to the job's own cap. Returns True (stop decoding) once every job went away.
    """
    if all(j.stream is None for j in batch):
        return None

    def on_tokens(step_tokens: list[int | None]) -> bool:
        for job, tok in zip(batch, step_tokens):
            if job.stream is None or tok is None or job.cancelled or job.streamed >= job.max_new_tokens:
                continue
            job.streamed += 1
            job.loop.call_soon_threadsafe(job.stream.put_nowait, tok)
        return all(j.cancelled for j in batch)

    return on_tokens
