"""`vital extract-roi`, `vital build-index` and `vital roi-grid`: subcommands registered as plugins.

Also runnable without the entry points: `python -m index_builder.cli COMMAND ...` (and under torchrun:
`torchrun --nproc_per_node N -m index_builder.cli extract-roi ...`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from index_builder.roi_params import ROIParams
from vital_core.cli import CLIError
from vital_core.config import ConfigError, EncoderConfig, VitalConfig

if TYPE_CHECKING:
    from index_builder.encoder import PatchEncoder

log = logging.getLogger(__name__)


def _encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder")
    g.add_argument(
        "--preset", choices=("tiny", "qwen3-vl-8b"), default="tiny", help="model preset (default: tiny)"
    )
    g.add_argument(
        "--config", type=Path, help="VITAL config YAML; its `encoder` section is used (overrides --preset)"
    )
    g.add_argument(
        "--encoder-dir", type=Path, help="local MedSigLIP/SigLIP directory (overrides the config's path)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of a from-config (random) encoder")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--batch-size", type=int, default=16, help="images per encoder batch")


def encoder_config(args: argparse.Namespace) -> EncoderConfig:
    """The EncoderConfig selected by --config / --preset / --encoder-dir."""
    from dataclasses import replace

    from vital_core import presets

    try:
        cfg = (
            VitalConfig.from_yaml(args.config).encoder
            if args.config
            else presets.PRESETS[args.preset]().encoder
        )
    except (ConfigError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    if args.encoder_dir:
        if not args.encoder_dir.is_dir():
            raise CLIError(f"--encoder-dir {args.encoder_dir} is not a directory")
        cfg = replace(cfg, path=str(args.encoder_dir))
    return cfg


def _encoder(args: argparse.Namespace, device: str | None = None) -> PatchEncoder:
    from index_builder.encoder import EncoderError, PatchEncoder

    try:
        enc = PatchEncoder(
            encoder_config(args), device=device or args.device, seed=args.seed, batch_size=args.batch_size
        )
    except EncoderError as exc:
        raise CLIError(str(exc)) from exc
    return enc


def _spec(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    cfg = encoder_config(args)
    return {"encoder": asdict(cfg), "seed": args.seed if cfg.path is None else None}


def run_extract_roi(args: argparse.Namespace) -> int:
    """Extract ROI features for a JSONL manifest into a sharded store (torchrun-aware)."""
    from index_builder.samples import SampleError, read_manifest, read_step_masks
    from index_builder.store import extract_to_store

    try:
        # rows with `step_masks` also get one feature per step whose mask is not the row's (key id#sK)
        refs = read_manifest(args.manifest, require_mask=True) + read_step_masks(args.manifest)
        params = ROIParams(tau=args.tau, margin=args.margin, crop_pool=args.crop_pool, top_k=args.top_k)
    except (SampleError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    barrier, device = None, args.device
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group(backend="gloo")
        barrier = dist.barrier
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    try:
        t0 = time.perf_counter()
        report = extract_to_store(
            _encoder(args, device),
            refs,
            args.out,
            params,
            _spec(args),
            shard_size=args.shard_size,
            rank=rank,
            world=world,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            barrier=barrier,
        )
        log.info(
            "rank %d/%d: wrote %d shards, %d already done, %.1fs",
            rank,
            world,
            len(report.written),
            len(report.skipped_shards),
            time.perf_counter() - t0,
        )
        if report.manifest:
            print(f"feature store: {report.manifest}")
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def run_build_index(args: argparse.Namespace) -> int:
    """Encode a reference corpus and build the FAISS patch index (two-stage for lossy factories)."""
    from index_builder.faiss_index import IndexError_
    from index_builder.index_build import build_patch_index
    from index_builder.samples import SampleError, read_corpus

    if not 0.0 < args.target_recall <= 1.0:
        raise CLIError("--target-recall must be in (0, 1]")
    if args.tune_queries < 1:
        raise CLIError("--tune-queries must be at least 1")
    try:
        refs = read_corpus(args.corpus)
        t0 = time.perf_counter()
        index = build_patch_index(
            _encoder(args),
            refs,
            args.out,
            factory=args.factory,
            nprobe=args.nprobe,
            batch_size=args.batch_size,
            shard_images=args.shard_images,
            ondisk=args.ondisk,
            use_gpu=not args.cpu,
            seed=args.seed,
            progress=not args.no_progress,
            rerank=args.rerank,
            store_dtype=args.store_dtype,
            target_recall=None if args.no_tune else args.target_recall,
            tune_queries=args.tune_queries,
        )
    except (SampleError, IndexError_) as exc:
        raise CLIError(str(exc)) from exc
    print(
        f"index: {args.out} ({index.factory}, {len(index)} vectors from {len(index.image_ids)} images, "
        f"D={index.dim}, {time.perf_counter() - t0:.1f}s)"
    )
    if index.store is not None:
        t = index.tuning or {}
        tuned = (
            f"auto-tuned: recall@{t['k']}={t['recall']:.3f} (target {t['target']:g}"
            f"{'' if t['reached'] else ', NOT reached'})"
            if t
            else "not tuned"
        )
        print(
            f"two-stage: nprobe={index.nprobe}, {index.k_candidates} candidates re-ranked from "
            f"{index.store.path.name}; {tuned}"
        )
    return 0


def run_roi_grid(args: argparse.Namespace) -> int:
    """Grid-search tau x margin on (synthetic or given) samples; print, save JSON and heatmaps."""
    from index_builder.quality import choose, format_table, grid_search, save_results
    from index_builder.samples import SampleError, load_image, load_mask, read_manifest
    from index_builder.synthetic import write_dataset

    out = Path(args.out)
    manifest = args.manifest or write_dataset(out / "data", args.n, seed=args.data_seed)
    try:
        refs = read_manifest(manifest, require_mask=True)[: args.n]
        samples = [(load_image(r.image), load_mask(r.mask)) for r in refs]
        rows = grid_search(_encoder(args), samples, args.taus, args.margins)
    except (SampleError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    chosen = choose(rows)
    print(format_table(rows))
    print(f"chosen: tau={chosen.tau:g} margin={chosen.margin:g} (highest SNR with coverage >= 10%)")
    info = {"samples": len(samples), "manifest": str(manifest), "encoder": _spec(args)}
    for path in save_results(rows, chosen, out, info):
        print(f"wrote {path}")
    return 0


def register_extract_roi(subparsers: argparse._SubParsersAction) -> None:
    """Add `extract-roi`."""
    p = subparsers.add_parser(
        "extract-roi",
        help="extract adaptive ROI features into a sharded safetensors store",
        description="Adaptive ROI features (paper §A.5) for every {id, image, mask} row of a JSONL manifest. "
        "Resumable (finished shards are skipped); under torchrun each rank builds shards i %% WORLD_SIZE == RANK.",
    )
    p.add_argument(
        "manifest", type=Path, help="JSONL with rows {id, image, mask, ...} (paths relative to it)"
    )
    p.add_argument("--out", type=Path, required=True, help="store directory")
    p.add_argument(
        "--tau", type=float, default=ROIParams.tau, help="area threshold: full image at ratio >= tau"
    )
    p.add_argument(
        "--margin", type=float, default=ROIParams.margin, help="crop margin per side (box fraction)"
    )
    p.add_argument(
        "--crop-pool", choices=("valid", "mask"), default="valid", help="crop pooling (paper: valid)"
    )
    p.add_argument("--top-k", type=int, default=5, help="top patches kept per sample")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _encoder_args(p)
    p.set_defaults(func=run_extract_roi)


def register_build_index(subparsers: argparse._SubParsersAction) -> None:
    """Add `build-index`."""
    p = subparsers.add_parser(
        "build-index",
        help="build the FAISS index of reference patch features",
        description="Encode every image of a reference corpus (a folder of images or a JSONL manifest) and "
        "index all patch features (inner product on unit vectors = cosine).",
    )
    p.add_argument("corpus", type=Path, help="folder of images, or a JSONL manifest with {id, image}")
    p.add_argument("--out", type=Path, required=True, help="index directory")
    p.add_argument("--factory", help="FAISS index-factory string (default: chosen by corpus size, see docs)")
    p.add_argument("--nprobe", type=int, default=32, help="IVF lists visited per query (when not auto-tuned)")
    rr = p.add_mutually_exclusive_group()
    rr.add_argument(
        "--rerank",
        dest="rerank",
        action="store_true",
        default=None,
        help="two-stage: keep the vectors in an on-disk store and re-rank candidates exactly "
        "(default: on for lossy factories such as IVF-PQ)",
    )
    rr.add_argument("--no-rerank", dest="rerank", action="store_false", help="one-stage index only")
    p.add_argument(
        "--store-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="dtype of the on-disk re-ranking store (default float16)",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="strict recall@10 the auto-tuning of nprobe and candidate count aims for (default 0.95)",
    )
    p.add_argument("--tune-queries", type=int, default=200, help="held-out queries for auto-tuning")
    p.add_argument(
        "--no-tune",
        action="store_true",
        help="skip auto-tuning (keep --nprobe and 256 candidates)",
    )
    p.add_argument("--shard-images", type=int, help="build shards of this many images and merge them")
    p.add_argument("--ondisk", action="store_true", help="merge IVF shards with on-disk inverted lists")
    p.add_argument("--cpu", action="store_true", help="never use faiss-gpu even when present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _encoder_args(p)
    p.set_defaults(func=run_build_index)


def register_roi_grid(subparsers: argparse._SubParsersAction) -> None:
    """Add `roi-grid`."""
    p = subparsers.add_parser(
        "roi-grid",
        help="grid-search the ROI area threshold and crop margin (coverage / intensity / SNR)",
        description="Paper §A.5.3 grid search. Without --manifest it generates synthetic samples.",
    )
    p.add_argument("--manifest", type=Path, help="JSONL with {id, image, mask} (default: synthetic data)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--taus", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3])
    p.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    p.add_argument("--out", type=Path, required=True, help="output folder (grid.json, grid_*.png)")
    _encoder_args(p)
    p.set_defaults(func=run_roi_grid)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add all three index_builder subcommands."""
    register_extract_roi(subparsers)
    register_build_index(subparsers)
    register_roi_grid(subparsers)


def main(argv: list[str] | None = None) -> int:
    """`python -m index_builder.cli ...` behaves exactly like `vital ...` (every registered command)."""
    from vital_core.cli import main as vital_main

    return vital_main(argv)


if __name__ == "__main__":
    sys.exit(main())
