"""`vital batch`'s loop: items → the server's decoding → the model's one answer call, in small batches → JSONL.

Each item goes through what `/answer` runs: `server.images.decode_image` (the one imaging path, with the route's
spec), then `VitalModel.answer` with the server's step runner and image-prefix cache (`server.engine`), in
batches that share K (as the engine batches). `--explain` runs the `/explain` pipeline (`server.explain`)
item by item. One JSON line per item, written and flushed once its batch is done, in input order (with
`--ray`, `server/batch_ray.py`, in completion order):

    {"id", "question", "answer", "k", "image": {format, width, height[, axis, slice, ...]},
     "timings_ms": {"decode_image", "model", <stages>}, "batch_size", "error": null}

and for a failed item `answer`/`k` are null and `error` is `{"code", "message"}` (the HTTP error's shape).
Resume: ids already in the output are skipped; a torn last line (a killed run) is cut before appending.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from server.batch_inputs import BatchItem
from server.errors import APIError
from server.explain import Explainer
from server.images import DecodedImage, decode_image
from server.routes import image_info
from server.settings import Settings
from vital_core.imaging import ImagingSpec
from vital_core.model import VitalModel
from vital_core.prefix_cache import PrefixCache
from vital_core.qtypes import auto_k
from vital_core.static_cache import StaticRunner
from vital_core.timing import StageTimer

log = logging.getLogger("vital.batch")


@dataclass
class BatchOptions:
    """How a batch run answers (the same knobs as a request to /answer) and how it runs."""

    k: int | str | None = None
    """K of every item: None = the bundle's default, "auto" = from each question's type, else 0..K_max."""
    max_new_tokens: int = 64
    """Answer token cap (the CLI defaults it as the server does: the bundle's, bounded by VITAL_MAX_NEW_TOKENS)."""
    spec: ImagingSpec = field(default_factory=ImagingSpec)
    """View of volumes and windowing, as the request fields axis / slice / window."""
    batch_size: int = 4
    """Items decoded and answered together (one forward pass per K within a batch)."""
    top_k: int = 5
    """Nearest reference patches per step with --explain."""
    limit: int | None = None
    """Answer at most this many not-yet-done items, then stop (resume continues later)."""
    progress: bool = True


@dataclass
class BatchStats:
    """What a run did."""

    items: int = 0
    """Items in the input."""
    skipped: int = 0
    """Already in the output (resume)."""
    answered: int = 0
    errors: int = 0
    seconds: float = 0.0
    model_calls: int = 0
    """Forward passes (`VitalModel.answer` calls, or explanations)."""
    first_batch_s: float | None = None
    """Seconds from the start of the run until its first batch was written (with --ray: starting the actors
    and loading the bundle in them, plus that batch)."""
    first_batch_lines: int = 0

    def steady_rate(self) -> float | None:
        """Items/s after the first batch (start-up excluded); None with a single batch."""
        if self.first_batch_s is None or self.seconds <= self.first_batch_s:
            return None
        rest = self.written - self.first_batch_lines
        return rest / (self.seconds - self.first_batch_s) if rest > 0 else None

    @property
    def written(self) -> int:
        """Lines written by this run."""
        return self.answered + self.errors


@dataclass
class _Work:
    item: BatchItem
    k: int
    decoded: DecodedImage | None = None
    decode_ms: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)


def done_ids(out: Path) -> set[str]:
    """Ids already written to `out`; a torn last line (no newline: the run was killed mid-write) is cut."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning(
            "%s: cutting a torn last line (%d bytes) left by an interrupted run", out, len(data) - cut
        )
        with out.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    ids = set()
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: not JSON; ignored for resume", out, lineno)
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            ids.add(row["id"])
    return ids


def resolve_k(question: str, k: int | str | None, model: VitalModel) -> int:
    """An item's K as the server resolves a request's (`server.routes.resolve_k`)."""
    latent = model.config.latent
    if k is None:
        return latent.k_default
    if k == "auto":
        return auto_k(question, latent.k_max)
    return int(k)


@dataclass
class Answerer:
    """What answers: the model as `vital serve` loads it, its step runner and prefix cache, and the /explain
    pipeline when asked. One per process (or per Ray actor)."""

    model: VitalModel
    runner: StaticRunner | None = None
    prefix_cache: PrefixCache | None = None
    explainer: Explainer | None = None

    @classmethod
    def load(cls, settings: Settings, explain: bool = False) -> Answerer:
        """Load the bundle of `settings` as the server does (`server.app.default_loader`, the K settings, the
        engine's runner and prefix cache; `server.explain.load_explainer` with `explain`)."""
        from server.app import apply_k_settings, default_loader
        from server.engine import make_prefix_cache, make_runner
        from server.explain import load_explainer

        device = settings.resolved_device()
        model = default_loader(settings, device)
        apply_k_settings(model, settings)
        return cls(
            model,
            make_runner(model, settings.step_mode, settings.static_cache_bytes),
            make_prefix_cache(model, settings.prefix_cache_bytes),
            load_explainer(model, settings, device) if explain else None,
        )

    def answer_items(
        self, items: Sequence[BatchItem], options: BatchOptions
    ) -> tuple[list[dict[str, Any]], int]:
        """One batch: decode every item, answer the decoded ones; (a record per item in input order, the
        number of model calls). Used by the local loop and by each Ray actor alike."""
        chunk = [_Work(it, resolve_k(it.question, options.k, self.model)) for it in items]
        for w in chunk:
            _decode(w, options.spec)
        live = [w for w in chunk if not w.record]
        if self.explainer is not None:
            for w in live:
                _explain(w, self.explainer, options)
            calls = len(live)
        else:
            calls = _answer(self.model, live, options, self.runner, self.prefix_cache)
        return [w.record for w in chunk], calls


def pending(
    items: Sequence[BatchItem], out: Path, options: BatchOptions
) -> tuple[list[BatchItem], BatchStats]:
    """The items not yet in `out` (at most `options.limit`), and the run's stats so far."""
    done = done_ids(out)
    todo = [it for it in items if it.id not in done]
    stats = BatchStats(items=len(items), skipped=len(items) - len(todo))
    if options.limit is not None:
        todo = todo[: options.limit]
    out.parent.mkdir(parents=True, exist_ok=True)
    return todo, stats


def append_records(
    f: IO[str], records: Sequence[dict[str, Any]], stats: BatchStats, started: float | None = None
) -> None:
    """Write one line per record and flush (a kill loses at most the batch in flight); count them. `started`
    (perf_counter at the run's start) times the first batch."""
    if started is not None and stats.first_batch_s is None and records:
        stats.first_batch_s, stats.first_batch_lines = time.perf_counter() - started, len(records)
    for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        stats.errors += record["error"] is not None
        stats.answered += record["error"] is None


def progress_bar(total: int, options: BatchOptions):  # tqdm.tqdm
    """The run's progress bar (stderr; off with `progress=False`)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="item", disable=not options.progress, desc="vital batch")


def run_batch(answerer: Answerer, items: Sequence[BatchItem], out: Path, options: BatchOptions) -> BatchStats:
    """Answer (or explain) every item not yet in `out`, appending one JSON line per item."""
    t0 = time.perf_counter()
    todo, stats = pending(items, out, options)
    with out.open("a", encoding="utf-8") as f, progress_bar(len(todo), options) as bar:
        for start in range(0, len(todo), options.batch_size):
            records, calls = answerer.answer_items(todo[start : start + options.batch_size], options)
            stats.model_calls += calls
            append_records(f, records, stats, t0)
            bar.update(len(records))
    stats.seconds = time.perf_counter() - t0
    return stats


def _decode(w: _Work, spec: ImagingSpec) -> None:
    """Load and decode one item with the server's decoder; a failure becomes the item's error record."""
    if w.item.error is not None:
        w.record = _error(w, *w.item.error)
        return
    t = time.perf_counter()
    failed: tuple[str, str] | None = None
    try:
        w.decoded = decode_image(w.item.load(), spec=spec, limits=w.item.limits())
    except APIError as exc:
        failed = (exc.code, exc.message)
    except OSError as exc:
        failed = ("unreadable_image", f"cannot read the item: {exc}")
    except Exception as exc:  # a bad item never stops the run
        log.exception("item %s: decoding failed", w.item.id)
        failed = ("internal_error", f"{type(exc).__name__}: {exc}")
    w.decode_ms = 1000 * (time.perf_counter() - t)
    if failed:
        w.record = _error(w, *failed)


def _answer(
    model: VitalModel,
    live: list[_Work],
    options: BatchOptions,
    runner: StaticRunner | None,
    prefix_cache: PrefixCache | None,
) -> int:
    """One `VitalModel.answer` call per K among the decoded items (the engine batches by K); returns calls."""
    by_k: dict[int, list[_Work]] = defaultdict(list)
    for w in live:
        by_k[w.k].append(w)
    for k, group in by_k.items():
        timer = StageTimer(model.device)
        t = time.perf_counter()
        try:
            answers = model.answer(
                [w.decoded.image for w in group],
                [w.item.question for w in group],
                k=k,
                max_new_tokens=options.max_new_tokens,
                timer=timer,
                runner=runner,
                prefix_cache=prefix_cache,
            )
        except Exception as exc:  # e.g. out of memory for this batch: its items are errors, the run goes on
            log.exception("model call failed for %d items", len(group))
            for w in group:
                w.record = _error(w, "internal_error", f"the model failed: {type(exc).__name__}: {exc}")
            continue
        model_ms = 1000 * (time.perf_counter() - t)
        stages = timer.totals_ms()
        for w, ans in zip(group, answers):
            timings = {"decode_image": w.decode_ms, "model": model_ms, **stages}
            w.record = _ok(w, ans.text, ans.k, timings, len(group))
    return len(by_k)


def _explain(w: _Work, explainer: Explainer, options: BatchOptions) -> None:
    """The /explain pipeline for one item; steps as in the route's response, without the PNG overlay."""
    t = time.perf_counter()
    try:
        res = explainer.explain(w.decoded.image, w.item.question, w.k, options.max_new_tokens, options.top_k)
    except Exception as exc:
        log.exception("item %s: explanation failed", w.item.id)
        w.record = _error(w, "internal_error", f"the explanation failed: {type(exc).__name__}: {exc}")
        return
    timings = {"decode_image": w.decode_ms, "model": 1000 * (time.perf_counter() - t), **res.timings_ms}
    w.record = _ok(w, res.answer, res.k, timings, 1)
    w.record["steps"] = [s.model_dump(exclude={"heatmap": {"png_base64"}}) for s in res.steps]


def _ok(w: _Work, answer: str, k: int, timings: dict[str, float], batch_size: int) -> dict[str, Any]:
    return {
        "id": w.item.id,
        "question": w.item.question,
        "answer": answer,
        "k": k,
        "image": image_info(w.decoded),
        "timings_ms": {name: round(ms, 3) for name, ms in timings.items()},
        "batch_size": batch_size,
        "error": None,
    }


def _error(w: _Work, code: str, message: str) -> dict[str, Any]:
    return {
        "id": w.item.id,
        "question": w.item.question,
        "answer": None,
        "k": None,
        "timings_ms": {"decode_image": round(w.decode_ms, 3)},
        "error": {"code": code, "message": message},
    }
