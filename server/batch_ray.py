"""`vital batch --ray ADDRESS`: the same batches on a Ray cluster, via Ray Data `map_batches` with one model per
actor (the optional extra `.[ray]`; nothing else imports Ray).

The driver keeps what makes a run resumable: it reads the output, sends only the items not yet there, and appends
each line as its batch comes back (in completion order, not input order: compare runs by id). Each actor loads
the bundle once (`Answerer.load`, as `vital serve` does) and answers its batches with `Answerer.answer_items`,
the call the local loop makes, so the decoding and the latent loop are the server's. Items are plain rows (id,
question, absolute path or DICOMweb reference): on a multi-host cluster, local paths must be readable by every
node (a shared file system); a UID list needs no shared files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.batch import Answerer, BatchOptions, BatchStats, append_records, pending, progress_bar
from server.batch_inputs import BatchItem
from server.settings import Settings


class BatchActor:
    """A Ray Data actor: one model, loaded once; `__call__` answers one batch of item rows."""

    def __init__(self, settings: Settings, options: BatchOptions, explain: bool) -> None:
        self.answerer = Answerer.load(settings, explain)
        self.options = options

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        items = [_item(row) for row in _rows(batch)]
        records, calls = self.answerer.answer_items(items, self.options)
        return {
            "line": [json.dumps(r, ensure_ascii=False) for r in records],
            "calls": [calls] + [0] * (len(records) - 1),  # counted once per batch
        }


def _row(item: BatchItem) -> dict[str, str]:
    """An item as an all-string row (Arrow-friendly)."""
    return {
        "id": item.id,
        "question": item.question,
        "source": item.source,
        "pacs": item.pacs or "",
        "error": json.dumps(item.error) if item.error else "",
    }


def _rows(batch: dict[str, Any]) -> list[dict[str, str]]:
    names = list(batch)
    return [dict(zip(names, (str(v) for v in values))) for values in zip(*(batch[n] for n in names))]


def _item(row: dict[str, str]) -> BatchItem:
    error = tuple(json.loads(row["error"])) if row["error"] else None
    return BatchItem(row["id"], row["question"], row["source"], pacs=row["pacs"] or None, error=error)


def actor_resources(settings: Settings) -> dict[str, float]:
    """One GPU per actor when the model runs on CUDA (actors = GPUs), else one CPU."""
    if settings.device.startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": 1}


def run_batch_ray(
    settings: Settings,
    items: Sequence[BatchItem],
    out: Path,
    options: BatchOptions,
    *,
    actors: int = 1,
    explain: bool = False,
    resources: dict[str, float] | None = None,
) -> BatchStats:
    """Answer every item not yet in `out` on the connected Ray cluster (`ray.init` done by the caller),
    appending one JSON line per item as batches complete."""
    import ray

    t0 = time.perf_counter()
    todo, stats = pending(items, out, options)
    if todo:
        settings = settings.model_copy(
            update={"bundle": Path(settings.bundle).resolve()}
        )  # workers' cwd may differ
        ds = ray.data.from_items([_row(it) for it in todo])
        ds = ds.map_batches(
            BatchActor,
            fn_constructor_kwargs={"settings": settings, "options": options, "explain": explain},
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            **(resources or actor_resources(settings)),
        )
        with out.open("a", encoding="utf-8") as f, progress_bar(len(todo), options) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                records = [json.loads(str(line)) for line in batch["line"]]
                stats.model_calls += int(sum(int(c) for c in batch["calls"]))
                append_records(f, records, stats, t0)
                bar.update(len(records))
    stats.seconds = time.perf_counter() - t0
    return stats
