"""`vital train` (a recipe, plain or under torchrun) and `vital eval` (answer quality on a split)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vital_core.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital train` and `vital eval`."""
    p = sub.add_parser(
        "train",
        help="train with a recipe (dual supervision + curriculum); runs under torchrun too",
        description="Train VITAL from a recipe YAML (see configs/). Resumes from the run's last checkpoint "
        "unless --no-resume. Multi-GPU: torchrun --nproc_per_node N -m vital_core.cli train --recipe ...",
    )
    p.add_argument("--recipe", required=True, help="recipe YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=1e-4 (repeatable)")  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--export", metavar="DIR", help="write the trained model as a bundle here")
    p.add_argument("--eval-split", help="evaluate on this split after training (scores go into the bundle)")
    p.set_defaults(func=run_train)

    e = sub.add_parser(
        "eval",
        help="closed-ended accuracy and token-F1 of a bundle on a five-tuple split",
        description="Answer every question of a manifest split and report closed-ended accuracy and "
        "token-F1 per question type and modality (definitions in docs/evaluation.md).",
    )
    e.add_argument("--bundle", required=True, help="bundle directory")
    e.add_argument("--manifest", required=True, help="five-tuple JSONL manifest")
    e.add_argument("--split", default="test", help="split to evaluate (default test)")
    e.add_argument("--k", default="auto", help='K: an integer, "auto" (question classifier) or "sample"')
    e.add_argument("--limit", type=int, help="evaluate only the first N samples")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="write the JSON report here (and a .md table beside it)")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    """Train, optionally export a bundle and score it."""
    from training.dataset import ManifestError
    from training.recipe import Recipe
    from training.trainer import Trainer
    from vital_core.config import ConfigError

    try:
        recipe = Recipe.from_yaml(args.recipe, args.set)
        trainer = Trainer(recipe, resume=not args.no_resume)
        result = trainer.run()
    except (ConfigError, ManifestError, FileNotFoundError, KeyError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    print(json.dumps({"run": recipe.output_dir, **result}))
    if args.export and trainer.is_main:
        from training.export import export_bundle

        scores = {}
        if args.eval_split:
            scores = evaluate_model(trainer.model, recipe.data.manifest, args.eval_split)
        out = export_bundle(
            trainer.model, recipe, args.export, scores=scores, command=" ".join(["vital", *sys.argv[1:]])
        )
        print(f"bundle written to {out}")
    return 0


def evaluate_model(model, manifest: str, split: str, k: str = "auto", limit: int | None = None) -> dict:  # noqa: ANN001
    """Score a model on one split of a manifest."""
    from training.dataset import load_manifest
    from training.evaluate import predict, score

    samples = [s for s in load_manifest(manifest) if s.split == split][:limit]
    if not samples:
        raise CLIError(f"{manifest}: no samples in split {split!r}")
    kk: int | str = int(k) if str(k).isdigit() else k
    return score(predict(model, samples, k=kk))


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
