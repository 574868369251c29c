"""`vital build-questions` (sources -> PNG pairs + question manifest) and `vital distill` (teacher -> manifest).

Until the entry points are registered, run `python -m training.cli.distill {build-questions,distill} ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from vital_core.cli import CLIError
from vital_core.config import QUESTION_TYPES

if TYPE_CHECKING:
    from training.distill.runner import DistillConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `build-questions` and `distill` subcommands."""
    _register_build(subparsers)
    _register_distill(subparsers)


def _register_build(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-questions",
        help="read MSD / BiomedParse / CSV sources into PNG pairs and a question manifest",
        description=(
            "Read segmentation sources into OUT/images/*.png and OUT/masks/*.png, then write template "
            "questions of the six types with placeholder answers: OUT/questions.jsonl (five-tuple format), "
            "OUT/questions.meta.jsonl (hidden facts for the teacher) and OUT/questions.json (counts). "
            "Next step: vital distill OUT/questions.jsonl."
        ),
    )
    p.add_argument(
        "--msd",
        type=Path,
        action="append",
        default=[],
        metavar="TASK_DIR",
        help="MSD TaskXX_Name folder (repeatable)",
    )
    p.add_argument(
        "--biomedparse",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="BiomedParse folder (repeatable)",
    )
    p.add_argument(
        "--folder",
        type=Path,
        action="append",
        default=[],
        metavar="CSV",
        help="CSV of image/mask pairs (repeatable)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--per-record", type=int, default=1, help="questions per image-mask pair (default 1)")
    p.add_argument(
        "--types",
        nargs="+",
        default=list(QUESTION_TYPES),
        choices=QUESTION_TYPES,
        help="question types to deal in turn",
    )
    p.add_argument(
        "--min-pixels", type=int, default=100, help="MSD: minimum label pixels on a slice (default 100)"
    )
    p.add_argument(
        "--max-slices",
        type=int,
        default=0,
        help="MSD: at most N evenly spaced slices per label per volume (0 = all)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--splits",
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions, by case, stratified by source x modality (default 0.8 0.1 0.1)",
    )
    p.add_argument(
        "--force", action="store_true", help="write into OUT even if it already holds questions.jsonl"
    )
    p.set_defaults(func=run_build)


def _register_distill(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distill",
        help="write answers and reasoning chains with a teacher MLLM, behind the quality gates",
        description=(
            "Send each question (with a teacher-only overlay image) to an OpenAI-compatible chat-completions "
            "endpoint, check every reply with the quality gates, retry failures with a strict-rules prompt "
            "(up to --max-retries), and append finished samples to OUT/results.jsonl. Reruns skip finished "
            "samples. Writes OUT/report.json and OUT/manifest.jsonl (accepted samples). Endpoint settings "
            "default to VITAL_TEACHER_BASE_URL, VITAL_TEACHER_MODEL and VITAL_TEACHER_API_KEY."
        ),
    )
    p.add_argument(
        "questions", type=Path, help="question manifest from build-questions (or any five-tuple manifest)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: the question manifest's folder)")
    p.add_argument("--base-url", help="OpenAI-compatible base URL (env VITAL_TEACHER_BASE_URL)")
    p.add_argument("--model", help="teacher model (env VITAL_TEACHER_MODEL)")
    p.add_argument(
        "--api-key", help="API key (prefer env VITAL_TEACHER_API_KEY: flags show in process lists)"
    )
    p.add_argument("--concurrency", type=int, help="requests in flight (default 4)")
    p.add_argument("--rpm", type=float, help="requests per minute, 0 = unlimited (default 60)")
    p.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    p.add_argument("--http-retries", type=int, help="retries on 429/5xx/timeouts per request (default 6)")
    p.add_argument("--backoff", type=float, help="base back-off seconds, doubled per retry (default 1)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: not sent)")
    p.add_argument(
        "--json-mode", action="store_true", default=None, help='send response_format {"type": "json_object"}'
    )
    p.add_argument(
        "--max-retries", type=int, default=4, help="retries after a failed quality check (default 4)"
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="downscale overlay images to this longer side (default 1024)",
    )
    p.add_argument("--limit", type=int, default=0, help="distil at most N pending samples this run (0 = all)")
    p.add_argument("--retry-rejected", action="store_true", help="also redo samples logged as rejected")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the prompts of the first pending sample, write its overlay, send nothing",
    )
    p.set_defaults(func=run_distill)


def run_build(args: argparse.Namespace) -> int:
    """Read the sources and write PNG pairs plus the question manifest."""
    from training.sources import read_biomedparse, read_folder, read_msd
    from training.sources.questions import build_question_set

    if not (args.msd or args.biomedparse or args.folder):
        raise CLIError("give at least one source: --msd, --biomedparse or --folder")
    for path in [*args.msd, *args.biomedparse]:
        if not path.is_dir():
            raise CLIError(f"not a folder: {path}")
    for path in args.folder:
        if not path.is_file():
            raise CLIError(f"not a file: {path}")
    if args.per_record < 1:
        raise CLIError("--per-record must be at least 1")
    if min(args.splits) < 0 or abs(sum(args.splits) - 1.0) > 1e-6:
        raise CLIError("--splits must be three non-negative fractions summing to 1")
    if (args.out / "questions.jsonl").exists() and not args.force:
        raise CLIError(f"{args.out} already holds questions.jsonl; use --force to overwrite it")
    start = time.perf_counter()
    records = chain(
        *(read_msd(p, min_pixels=args.min_pixels, max_slices_per_label=args.max_slices) for p in args.msd),
        *(read_biomedparse(p) for p in args.biomedparse),
        *(read_folder(p) for p in args.folder),
    )
    try:
        path = build_question_set(
            records,
            args.out,
            per_record=args.per_record,
            seed=args.seed,
            types=args.types,
            fractions=tuple(args.splits),
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    summary = json.loads((args.out / "questions.json").read_text())
    print(
        f"wrote {summary['questions']} questions about {summary['records']} image-mask pairs to {path} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    print(f"  by type: {summary['by_question_type']}\n  by split: {summary['by_split']}")
    return 0


def run_distill(args: argparse.Namespace) -> int:
    """Distil a question manifest with the teacher."""
    from pydantic import ValidationError

    from training.data.manifest import ManifestError
    from training.distill.client import FatalTeacherError, TeacherSettings
    from training.distill.runner import DistillConfig, distill_async

    if not args.questions.is_file():
        raise CLIError(f"no such question manifest: {args.questions}")
    if args.max_retries < 0 or args.limit < 0:
        raise CLIError("--max-retries and --limit must be non-negative")
    overrides = {
        "base_url": args.base_url,
        "model": args.model,
        "api_key": args.api_key,
        "concurrency": args.concurrency,
        "rpm": args.rpm,
        "timeout_s": args.timeout,
        "http_retries": args.http_retries,
        "backoff_base_s": args.backoff,
        "temperature": args.temperature,
        "json_mode": args.json_mode,
    }
    try:
        settings = TeacherSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise CLIError(f"invalid teacher settings: {exc}") from exc
    if settings.concurrency < 1:
        raise CLIError("--concurrency must be at least 1")
    cfg = DistillConfig(
        questions=args.questions,
        out=args.out or args.questions.parent,
        max_retries=args.max_retries,
        max_side=args.max_side,
        limit=args.limit,
        retry_rejected=args.retry_rejected,
    )
    if args.dry_run:
        return _dry_run(cfg)
    if not settings.model:
        raise CLIError("no teacher model: pass --model or set VITAL_TEACHER_MODEL")
    try:
        summary = asyncio.run(distill_async(cfg, settings))
    except ManifestError as exc:
        raise CLIError(f"invalid question manifest:\n{exc}") from exc
    except FatalTeacherError as exc:
        raise CLIError(f"teacher endpoint refused the requests (finished samples are kept): {exc}") from exc
    print(summary.report.table())
    if summary.unfinished:
        print(f"{summary.unfinished} sample(s) hit transient errors too often and stay pending: run again")
    print(
        f"wrote {summary.report.accepted} samples to {summary.manifest}; report in {cfg.out / 'report.json'}"
    )
    return 0


def _dry_run(cfg: DistillConfig) -> int:
    from training.data.manifest import load_manifest
    from training.distill.overlay import load_overlay
    from training.distill.prompts import SYSTEM_PROMPT
    from training.distill.results import read_results
    from training.distill.runner import meta_path, sample_user_prompt
    from training.sources.questions import read_meta

    done = read_results(cfg.out / "results.jsonl")
    pending = [s for s in load_manifest(cfg.questions) if s.id not in done]
    if not pending:
        print("nothing pending")
        return 0
    s = pending[0]
    meta = read_meta(meta_path(cfg.questions)).get(s.id, {})
    print(f"== system ==\n{SYSTEM_PROMPT}\n\n== user ({s.id}) ==")
    print(sample_user_prompt(s, meta))
    cfg.out.mkdir(parents=True, exist_ok=True)
    preview = cfg.out / "overlay-preview.png"
    load_overlay(s.image, s.mask, cfg.max_side).save(preview)
    print(f"\n== overlay image written to {preview}; {len(pending)} sample(s) pending ==")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m training.cli.distill ...` behaves exactly like `vital ...` (every registered command)."""
    from vital_core.cli import main as vital_main

    return vital_main(argv)


if __name__ == "__main__":
    sys.exit(main())
