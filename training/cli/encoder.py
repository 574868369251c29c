"""`vital train-encoder`: argument parsing for the tiny MedSigLIP trainer (training/encoder_train.py).

Kept apart from the trainer so that `vital --help` imports no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vital_core.cli import CLIError

DESCRIPTION = (
    "Train the tiny MedSigLIP of vital-tiny on phantom image-report pairs (SigLIP's sigmoid loss plus "
    "region-phrase and patch terms), save it in HF SiglipModel format; see docs/tiny-encoder.md."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital train-encoder`."""
    p = sub.add_parser(
        "train-encoder",
        help="train the tiny MedSigLIP encoder of vital-tiny on phantom data",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", default="data/tiny-build/phantom/manifest.jsonl", help="phantom manifest")
    p.add_argument("--out", default="data/tiny-build/encoder", help="directory to write (HF SiglipModel)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--images", type=int, default=1200, help="train-split images to use")
    p.add_argument("--seed", type=int, default=0, help="init and batch-order seed")
    p.add_argument("--phantom-seed", type=int, default=0, help="the seed the phantom data was generated with")
    p.add_argument("--bench-out", default=None, help="also score it on the test split and write results here")
    p.add_argument("--eval-only", action="store_true", help="only score an already trained --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (unless --eval-only) and optionally benchmark."""
    from training.encoder_train import bench_encoder, train_encoder

    if not Path(args.manifest).is_file():
        raise CLIError(
            f"manifest {args.manifest} not found (run `vital build-tiny-bundle` or `vital phantom`)"
        )
    if min(args.steps, args.batch_size, args.images) < 1 or args.lr <= 0:
        raise CLIError("--steps, --batch-size, --images and --lr must be positive")
    if args.eval_only:
        if not (Path(args.out) / "config.json").is_file():
            raise CLIError(f"--eval-only: no trained encoder in {args.out}")
    else:
        train_encoder(
            args.manifest,
            args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            images=args.images,
            seed=args.seed,
            phantom_seed=args.phantom_seed,
        )
    if args.bench_out:
        res = bench_encoder(args.out, args.manifest, args.bench_out, phantom_seed=args.phantom_seed)
        print(json.dumps({"trained": res["trained"], "random_init": res["random_init"]}))
    return 0
