"""`vital eval`: answer quality of a bundle on a five-tuple split (closed-ended accuracy, token-F1)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.cli_train import evaluate_model
from vital_core.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital eval`."""
    e = sub.add_parser(
        "eval",
        help="closed-ended accuracy and token-F1 of a bundle on a five-tuple split",
        description="Answer every question of a manifest split and report closed-ended accuracy and "
        "token-F1 per question type and modality.",
    )
    e.add_argument("--bundle", required=True, help="bundle directory")
    e.add_argument("--manifest", required=True, help="five-tuple JSONL manifest")
    e.add_argument("--split", default="test", help="split to evaluate (default test)")
    e.add_argument("--k", default="auto", help='K: an integer, "auto" (question classifier) or "sample"')
    e.add_argument("--limit", type=int, help="evaluate only the first N samples")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="write the JSON report here (and a .md table beside it)")
    e.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a bundle and print (and save) the report."""
    from training.dataset import ManifestError
    from training.evaluate import markdown_table
    from vital_core.bundle import BundleError, load_bundle

    if args.k not in ("auto", "sample") and not args.k.isdigit():
        raise CLIError(f'--k must be an integer, "auto" or "sample", not {args.k!r}')
    try:
        model = load_bundle(args.bundle, device=args.device)
        report = evaluate_model(model, args.manifest, args.split, args.k, args.limit)
    except (BundleError, ManifestError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    report["bundle"], report["split"], report["k"] = str(args.bundle), args.split, args.k
    table = markdown_table(report, f"{Path(args.bundle).name} on {args.split} (k={args.k})")
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(table)
    return 0
