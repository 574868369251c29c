"""Teacher distillation of a question manifest into the five-tuple manifest (paper §A.2-A.3).

For each pending sample: render the teacher-only overlay, send the system + user prompt, run the
gates; a failed attempt is retried with a strict-rules block naming every violation so far, up to
`max_retries` times, then the sample is logged as rejected and excluded. Finished samples are appended
to OUT/results.jsonl as they arrive; a rerun skips them. At the end OUT/report.json and
OUT/manifest.jsonl (accepted samples, validated with `load_manifest`) are (re)written from the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from training.data.manifest import Sample, load_manifest, write_manifest
from training.distill.client import RequestRejected, RetriesExhausted, TeacherClient, TeacherSettings
from training.distill.gates import Violation, run_gates
from training.distill.overlay import MAX_SIDE, load_overlay, png_data_url
from training.distill.prompts import SYSTEM_PROMPT, build_messages, retry_block, user_prompt
from training.distill.results import REQUEST_GATE, Report, ResultsLog, build_report, read_results
from training.sources.questions import read_meta

log = logging.getLogger(__name__)

MAX_RETRIES = 4
"""Retries after a failed first attempt (paper §A.3): at most 5 teacher replies per sample."""


@dataclass(frozen=True)
class DistillConfig:
    """What to distil and where."""

    questions: Path
    """Question manifest (five-tuple format, placeholder answers); its `*.meta.jsonl` sidecar is optional."""
    out: Path
    """Output folder: results.jsonl, report.json, manifest.jsonl."""
    max_retries: int = MAX_RETRIES
    max_side: int = MAX_SIDE
    limit: int = 0
    """Distil at most this many pending samples this run (0 = all)."""
    retry_rejected: bool = False
    """Also redo samples the log records as rejected."""


@dataclass(frozen=True)
class RunSummary:
    """What one run did, and the cumulative report."""

    requested: int
    """Samples attempted in this run."""
    unfinished: int
    """Samples whose requests kept failing transiently (left pending for the next run)."""
    report: Report
    manifest: Path


def meta_path(questions: Path) -> Path:
    """The sidecar of a question manifest: `questions.jsonl` -> `questions.meta.jsonl`."""
    return questions.with_name(questions.name.removesuffix(".jsonl") + ".meta.jsonl")


def sample_user_prompt(sample: Sample, meta: dict[str, Any]) -> str:
    """The per-sample user prompt from a question row and its sidecar facts."""
    return user_prompt(
        question=sample.question,
        question_type=sample.question_type,
        target=sample.target,
        target_type=sample.target_type,
        modality=sample.modality,
        asked_target=meta.get("asked_target", ""),
        expected_answer=expected_answer(meta),
    )


def teacher_messages(
    sample: Sample, meta: dict[str, Any], image_url: str, violations: list[Violation]
) -> list:
    """The chat messages for one attempt (a retry block when earlier attempts failed)."""
    user = sample_user_prompt(sample, meta)
    retry = retry_block(violations, sample.question_type) if violations else ""
    return build_messages(SYSTEM_PROMPT, user, image_url, retry)


def expected_answer(meta: dict[str, Any]) -> str:
    expected = str(meta.get("expected_answer", "")).strip()
    if expected.lower() in ("yes", "no"):
        return expected.capitalize() + "."
    return expected


async def distill_sample(
    client: TeacherClient, sample: Sample, meta: dict[str, Any], max_retries: int, max_side: int
) -> dict[str, Any]:
    """Run one sample through teacher + gates (with retries); the results record (accepted or rejected)."""
    overlay = await asyncio.to_thread(load_overlay, sample.image, sample.mask, max_side)
    image_url = await asyncio.to_thread(png_data_url, overlay)
    so_far: list[Violation] = []
    attempts: list[list[dict[str, str]]] = []
    reply = ""
    for attempt in range(max_retries + 1):
        messages = teacher_messages(sample, meta, image_url, so_far)
        try:
            reply = await client.complete(messages, sample_id=sample.id, attempt=attempt)
        except RequestRejected as exc:
            attempts.append([{"gate": REQUEST_GATE, "detail": str(exc)}])
            break
        result = run_gates(
            reply,
            question_type=sample.question_type,
            target=sample.target,
            target_type=sample.target_type,
            question=sample.question,
            expected_answer=expected_answer(meta),
        )
        attempts.append([asdict(v) for v in result.violations])
        if result.ok:
            assert result.output is not None
            return {
                "id": sample.id,
                "status": "accepted",
                "final_answer": result.output.final_answer,
                "reasoning_chain": list(result.output.reasoning_chain),
                "attempts": attempts,
            }
        so_far += [v for v in result.violations if v not in so_far]
    log.warning("sample %s rejected after %d attempt(s): %s", sample.id, len(attempts), attempts[-1])
    return {"id": sample.id, "status": "rejected", "attempts": attempts, "last_reply": reply[:2000]}


async def distill_async(
    cfg: DistillConfig, settings: TeacherSettings, client: TeacherClient | None = None
) -> RunSummary:
    """Distil every pending sample of `cfg.questions` with `settings.concurrency` requests in flight."""
    samples = load_manifest(cfg.questions)
    meta = read_meta(meta_path(cfg.questions))
    results_path = cfg.out / "results.jsonl"
    done = read_results(results_path)
    skip = {i for i, r in done.items() if r.get("status") == "accepted" or not cfg.retry_rejected}
    todo = [s for s in samples if s.id not in skip]
    if cfg.limit > 0:
        todo = todo[: cfg.limit]
    own_client = client is None
    client = client or TeacherClient(settings)
    results = ResultsLog(results_path)
    queue: asyncio.Queue[Sample] = asyncio.Queue()
    for s in todo:
        queue.put_nowait(s)
    unfinished = 0

    async def worker() -> None:
        nonlocal unfinished
        while True:
            try:
                sample = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                record = await distill_sample(
                    client, sample, meta.get(sample.id, {}), cfg.max_retries, cfg.max_side
                )
            except RetriesExhausted as exc:
                unfinished += 1
                log.warning("%s; left pending", exc)
                continue
            results.append(record)

    try:
        log.info("distilling %d of %d samples (%d already finished)", len(todo), len(samples), len(skip))
        tasks = [asyncio.create_task(worker()) for _ in range(max(1, settings.concurrency))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        results.close()
        if own_client:
            await client.aclose()
    report, manifest = finish(cfg, samples)
    return RunSummary(requested=len(todo), unfinished=unfinished, report=report, manifest=manifest)


def distill(cfg: DistillConfig, settings: TeacherSettings) -> RunSummary:
    """Synchronous wrapper of `distill_async`."""
    return asyncio.run(distill_async(cfg, settings))


def finish(cfg: DistillConfig, samples: list[Sample] | None = None) -> tuple[Report, Path]:
    """(Re)write OUT/report.json and OUT/manifest.jsonl from the results log; validate the manifest."""
    samples = samples if samples is not None else load_manifest(cfg.questions)
    results = read_results(cfg.out / "results.jsonl")
    report = build_report(results, [s.id for s in samples])
    (cfg.out / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    accepted = []
    for s in samples:
        rec = results.get(s.id)
        if rec is not None and rec.get("status") == "accepted":
            accepted.append(replace(s, answer=rec["final_answer"], reasoning=tuple(rec["reasoning_chain"])))
    manifest = write_manifest(accepted, cfg.out / "manifest.jsonl")
    load_manifest(manifest)  # the output must be a valid five-tuple manifest
    return report, manifest
