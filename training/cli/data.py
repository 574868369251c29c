"""`vital phantom` (generate the phantom dataset) and `vital check-data` (validate a five-tuple manifest)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from vital_core.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `phantom` and `check-data` subcommands."""
    p = subparsers.add_parser(
        "phantom",
        help="generate the procedural phantom five-tuple dataset (or audit one: --audit DIR)",
        description=(
            "Generate synthetic 2-D scans in nine modality styles (CT, MRI, X-ray, ultrasound, OCT, "
            "endoscopy, dermoscopy, fundus, pathology) with one target mask per sample, questions of the "
            "six types plus compositional multi-hop questions (hop 2's referent chosen by hop 1's result), "
            "canonical answers and 1-4 step reasoning chains. Writes DIR/images/, DIR/masks/, "
            "DIR/manifest.jsonl (with a stratified split field), DIR/{train,val,test}.jsonl, "
            "DIR/scenes.jsonl (per-object facts) and DIR/phantom.json. "
            "The same --n/--seed/--size/--task give byte-identical output whatever --workers is. "
            "--audit DIR prints the multi-hop gates of a generated set (docs/dataset.md) and exits 1 if "
            "one fails."
        ),
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder")
    p.add_argument(
        "--task",
        choices=("compositional", "lesion-hop", "legacy"),
        default="compositional",
        help="compositional (default: organ-hop multi-hop questions), or for comparison only lesion-hop "
        "(format 3-4's multi-hop family) or legacy (the earlier scenes and multi-hop kinds)",
    )
    p.add_argument(
        "--multihop-only",
        action="store_true",
        help="only multi-hop questions of the compositional or lesion-hop task (a held-out test set: use with "
        "--splits 0 0 1)",
    )
    p.add_argument("--audit", type=Path, metavar="DIR", help="print the multi-hop gates of the set in DIR")
    p.add_argument(
        "--audit-split", default="test", help="split of the audited set to score the gates on (default test)"
    )
    p.add_argument(
        "--fit",
        type=Path,
        metavar="DIR",
        help="fit the audit's lookups on this set's train split (default: the audited set's own)",
    )
    p.add_argument("--audit-out", type=Path, metavar="FILE", help="also write the audit as JSON (+ .md)")
    p.add_argument("--n", type=int, default=20000, help="number of samples (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels, 32-1024 (default 128)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--splits",
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions, stratified by modality x question type (default 0.8 0.1 0.1)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into DIR even if it already holds a manifest (files of a larger earlier run stay)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_phantom)

    c = subparsers.add_parser(
        "check-data",
        help="validate a five-tuple JSONL manifest",
        description="Validate every row of a five-tuple manifest (fields, types, question type, reasoning "
        "depth, unique ids, image and mask files) and print its composition.",
    )
    c.add_argument("manifest", type=Path, help="JSONL manifest")
    c.add_argument("--no-files", action="store_true", help="do not check that image and mask files exist")
    c.set_defaults(func=run_check)


def run_phantom(args: argparse.Namespace) -> int:
    """Generate the phantom dataset from parsed arguments (or audit one with --audit)."""
    from training.phantom import generate

    if args.audit is not None:
        return run_audit(args)
    if args.out is None:
        raise CLIError("--out DIR is required (or --audit DIR)")
    if args.multihop_only and args.task == "legacy":
        raise CLIError("--multihop-only needs --task compositional or lesion-hop")
    if args.n < 1:
        raise CLIError("--n must be at least 1")
    if args.seed < 0:
        raise CLIError("--seed must be non-negative")
    if not 32 <= args.size <= 1024:
        raise CLIError("--size must be between 32 and 1024")
    if args.workers < 1:
        raise CLIError("--workers must be at least 1")
    if min(args.splits) < 0 or abs(sum(args.splits) - 1.0) > 1e-6:
        raise CLIError("--splits must be three non-negative fractions summing to 1")
    if (args.out / "manifest.jsonl").exists() and not args.force:
        raise CLIError(f"{args.out} already holds a manifest.jsonl; use --force to overwrite it")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"{args.out} exists and is not a folder")
    start = time.perf_counter()
    manifest = generate(
        args.out,
        args.n,
        args.seed,
        args.size,
        args.workers,
        splits=tuple(args.splits),
        progress=not args.no_progress,
        task=args.task,
        multihop_only=args.multihop_only,
    )
    print(f"wrote {args.n} samples to {manifest} in {time.perf_counter() - start:.1f} s")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """Print (and optionally save) the multi-hop gates of a generated set; 1 when a gate fails."""
    import json

    from training.phantom.audit import audit, audit_table

    try:
        report = audit(args.audit, args.audit_split, args.fit)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from exc
    table = audit_table(report)
    print(table)
    if args.audit_out:
        args.audit_out.parent.mkdir(parents=True, exist_ok=True)
        args.audit_out.write_text(json.dumps(report, indent=2))
        args.audit_out.with_suffix(".md").write_text(table)
    return 0 if report["all_passed"] else 1


def run_check(args: argparse.Namespace) -> int:
    """Validate a manifest and print counts per split, modality, question type and depth."""
    from training.data.manifest import ManifestError, load_manifest

    try:
        samples = load_manifest(args.manifest, check_files=not args.no_files)
    except ManifestError as exc:
        raise CLIError(f"invalid manifest:\n{exc}") from exc
    print(f"{args.manifest}: {len(samples)} valid samples")
    for label, key in (
        ("split", lambda s: s.split),
        ("modality", lambda s: s.modality),
        ("question_type", lambda s: s.question_type),
        ("K", lambda s: str(s.k)),
    ):
        counts = Counter(key(s) for s in samples)
        print(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0
