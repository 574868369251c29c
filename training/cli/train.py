"""`vital train`: a recipe, plain or under torchrun."""

from __future__ import annotations

import argparse
import json
import sys

from vital_core.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital train`."""
    p = sub.add_parser(
        "train",
        help="train with a recipe (dual supervision + curriculum); runs under torchrun too",
        description="Train VITAL from a recipe YAML (see configs/). An output_dir that already holds a run "
        "is refused unless --resume (continue from its newest checkpoint, on any number of processes) or "
        "--overwrite (delete it and start over). Multi-GPU: torchrun --nproc_per_node N -m vital_core.cli "
        "train --recipe ...",
    )
    p.add_argument("--recipe", required=True, help="recipe YAML file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        dest="mode",
        action="store_const",
        const="resume",
        help="continue the run in output_dir from its newest checkpoint (start it when there is none)",
    )
    mode.add_argument(
        "--overwrite",
        dest="mode",
        action="store_const",
        const="overwrite",
        help="delete the run in output_dir (checkpoints, metrics.jsonl, final.safetensors) and start over",
    )
    mode.add_argument(
        "--no-resume", dest="mode", action="store_const", const="overwrite", help=argparse.SUPPRESS
    )
    p.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="N",
        help="stop after N optimizer steps in total, as a kill would (resume later)",
    )
    p.add_argument("--export", metavar="DIR", help="write the trained model as a bundle here")
    p.add_argument("--eval-split", help="evaluate on this split after training (scores go into the bundle)")
    p.set_defaults(func=run_train, mode="new")


def run_train(args: argparse.Namespace) -> int:
    """Train, optionally export a bundle and score it."""
    from training.trainer import teardown_distributed

    code = _train_and_export(args)
    # Only after success: a rank that raised may leave others inside a collective, where destroying the group can
    # hang (torchtitan#1342); a failing run exits non-zero either way.
    teardown_distributed()
    return code


def _train_and_export(args: argparse.Namespace) -> int:
    from training.data.manifest import ManifestError
    from training.recipe import Recipe
    from training.trainer import Trainer
    from vital_core.config import ConfigError

    try:
        recipe = Recipe.from_yaml(args.recipe, args.set)
        trainer = Trainer(recipe, mode=args.mode, stop_after_steps=args.stop_after_steps)
        result = trainer.run()
    except (ConfigError, ManifestError, FileNotFoundError, KeyError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if trainer.is_main:
        print(json.dumps({"run": recipe.output_dir, **result}))
    if args.export and "stopped_at" not in result:
        from training.export import export_bundle

        state = trainer.full_state()  # every rank takes part in gathering FSDP shards
        if trainer.is_main:
            scores = {}
            if args.eval_split and not (trainer.world > 1 and recipe.distributed == "fsdp"):
                scores = evaluate_model(trainer.model, recipe.data.manifest, args.eval_split)
            out = export_bundle(
                trainer.model,
                recipe,
                args.export,
                scores=scores,
                state=state,
                command=" ".join(["vital", *sys.argv[1:]]),
            )
            print(f"bundle written to {out}")
        if trainer.world > 1:
            import torch.distributed as dist

            dist.barrier()
    return 0


def evaluate_model(
    model,
    manifest: str,
    split: str,
    k: str = "auto",
    limit: int | None = None,
    max_new_tokens: int | None = None,
) -> dict:
    """Score a model on one split of a manifest (`max_new_tokens`: room for a written chain)."""
    from training.data.manifest import load_manifest
    from training.eval.evaluate import predict, score
    from vital_core.qtypes import parse_k

    samples = [s for s in load_manifest(manifest) if s.split == split][:limit]
    if not samples:
        raise CLIError(f"{manifest}: no samples in split {split!r}")
    try:
        kk = parse_k(k)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    return score(predict(model, samples, k=kk, max_new_tokens=max_new_tokens))
