"""`vital eval`: answer quality on a benchmark, plus `eval ablations`, `eval collapse`, `eval grounding`, `eval rescore`.

Definitions of every number: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vital_core.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital eval` and its subcommands."""
    e = sub.add_parser(
        "eval",
        help="closed-ended accuracy and token-F1 of a bundle on a benchmark; ablations, collapse, grounding",
        description="Answer every question of a benchmark (the five-tuple split of --manifest, or a published "
        "benchmark with --benchmark NAME --data PATH) and report closed-ended accuracy and token-F1 per "
        "answer type, question type and modality, with per-item predictions beside the report. Subcommands: ablations, collapse, grounding, rescore. "
        "Definitions: docs/evaluation.md.",
    )
    e.add_argument("--bundle", help="bundle directory")
    e.add_argument("--manifest", help="five-tuple JSONL manifest (for --benchmark five-tuple)")
    e.add_argument(
        "--benchmark",
        default="five-tuple",
        help="five-tuple (default), vqa-rad, slake, pathvqa, pmc-vqa or gemex",
    )
    e.add_argument("--data", help="benchmark file or folder in a published layout (docs/evaluation.md)")
    e.add_argument(
        "--format",
        dest="fmt",
        help="force the layout instead of detecting it from --data "
        "(vqa-rad: osf-json|hf-parquet; pathvqa: vqa-pkl|qa-pkl|hf-parquet; gemex: v1-jsonl|thinkvg-parquet)",
    )
    e.add_argument(
        "--image-dir",
        help="image folder when it is not where the layout puts it (GEMeX: the MIMIC-CXR-JPG files/ folder)",
    )
    e.add_argument("--split", default="test", help="split to evaluate (default test; val = validation)")
    e.add_argument(
        "--mode",
        choices=("latent", "direct", "cot"),
        default="latent",
        help="latent (default: K latent steps, then the answer), direct (K = 0, the answer at once) or cot "
        "(K = 0, the model writes its reasoning, then 'Answer:'; up to --max-new-tokens, default 160)",
    )
    e.add_argument(
        "--k",
        default=None,
        help='K in latent mode: an integer, "auto" (question classifier, default) or "sample"',
    )
    e.add_argument(
        "--usage",
        action="store_true",
        help="latent mode: also the latent-usage test (accuracy with the fed latents replaced by another "
        "sample's, and by noise of equal norm) on the closed questions",
    )
    e.add_argument("--limit", type=int, help="evaluate only the first N questions")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-new-tokens", type=int, help="cap on answer tokens (default: the bundle's)")
    e.add_argument(
        "--grounding",
        action="store_true",
        help="also score each latent step's heatmap against the items' boxes (GEMeX; loads the scaffolding)",
    )
    e.add_argument("--device", default="cpu")
    e.add_argument(
        "--out", help="write the JSON report here, a .md table and FILE.predictions.jsonl beside it"
    )
    e.set_defaults(func=run_eval)
    esub = e.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")

    a = esub.add_parser(
        "ablations",
        help="train and score the ablation arms (paper Tables 2, 3, 13, §C.5)",
        description="Train every arm of an ablation config from the same stage-0 bundle, "
        "score it, and write RESULTS.json / RESULTS.md. Finished arms are skipped.",
    )
    a.add_argument("--config", default="configs/ablations-tiny.yaml", help="ablation config YAML")
    a.add_argument("--arms", help="comma-separated arm names to run (default: the config's)")
    a.add_argument("--list", action="store_true", help="print the arms and exit")
    a.add_argument(
        "--seed",
        type=int,
        help="run the arms with this seed instead of the config's (its own output dir and results, "
        "suffixed -seedN)",
    )
    a.set_defaults(func=run_ablations_cmd)

    r = esub.add_parser(
        "rescore",
        help="re-score a per-item predictions file without the model",
        description="Recompute the report of a FILE.predictions.jsonl written by `vital eval --out` "
        "with the current metrics (no model, no images).",
    )
    r.add_argument("predictions", help="the .predictions.jsonl file")
    r.add_argument("--out", help="write the JSON report here (and a .md table beside it)")
    r.set_defaults(func=run_rescore)

    for name, helptext in (
        ("collapse", "inter-step cosine similarity of h_1..h_K (paper §C.6)"),
        ("grounding", "per-step pointing accuracy and IoU of the /explain heatmaps (§C.7)"),
    ):
        p = esub.add_parser(name, help=helptext, description=helptext + "; see docs/evaluation.md.")
        p.add_argument("--bundle", required=True, help="bundle directory (grounding needs its scaffolding)")
        p.add_argument("--manifest", required=True, help="five-tuple JSONL manifest (masks for grounding)")
        p.add_argument("--split", default="test")
        p.add_argument("--k", type=int, default=4, help="latent steps (default 4)")
        p.add_argument("--limit", type=int, default=200, help="first N samples (default 200)")
        p.add_argument(
            "--multihop",
            action="store_true",
            help="only the phantom's multi-hop questions (steps about different structures)",
        )
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", help="output folder (JSON, markdown, PNG)")
        if name == "grounding":
            p.add_argument("--examples", type=int, default=2, help="save per-step heatmap PNGs of N samples")
            p.add_argument(
                "--region-fraction",
                type=float,
                help="threshold of the steps' regions (fraction of the heatmap's range, (0, 1]; default: "
                "/explain's, index_builder.regions.DEFAULT_FRACTION)",
            )
            p.add_argument(
                "--fractions",
                help="comma-separated region thresholds to sweep (mean IoU vs the step masks per threshold, "
                "best flagged), e.g. 0.3,0.4,0.5,0.6,0.7",
            )
        p.set_defaults(func=run_collapse if name == "collapse" else run_grounding)


def _fractions(text: str | None, single: float | None) -> list[float] | None:
    """--fractions as floats in (0, 1] (and --region-fraction checked); CLIError otherwise."""
    from index_builder.regions import RegionError, check_fraction

    try:
        if single is not None:
            check_fraction(single)
        if not text:
            return None
        return [check_fraction(float(v)) for v in text.split(",") if v.strip()]
    except (RegionError, ValueError) as exc:
        raise CLIError(f"--fractions/--region-fraction: {exc}") from exc


def _load(bundle: str, device: str, scaffold: bool = False) -> Any:
    from vital_core.bundle import BundleError, load_bundle

    try:
        return load_bundle(bundle, device=device, scaffold=scaffold)
    except (BundleError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc


def _write(out: str | Path, report: dict, table: str) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(table)


def _eval_items(args: argparse.Namespace) -> list:
    """The questions to ask (five-tuple samples or benchmark items), all checked before any model loads."""
    from training.data.manifest import ManifestError, load_manifest
    from training.eval.vqa_datasets import BenchmarkError, load_benchmark

    path = args.manifest if args.benchmark == "five-tuple" and not args.data else args.data
    if not path:
        raise CLIError("--manifest is required" if args.benchmark == "five-tuple" else "--data is required")
    if args.k == "sample" and args.benchmark != "five-tuple":
        raise CLIError("--k sample needs --benchmark five-tuple (it uses each sample's reasoning depth)")
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be >= 1")
    try:
        if args.benchmark == "five-tuple" and not args.data:
            items: list = [s for s in load_manifest(path) if s.split == args.split]
            if not items:
                raise CLIError(f"{path}: no samples in split {args.split!r}")
            return items[: args.limit]
        items = load_benchmark(args.benchmark, path, args.split, fmt=args.fmt, image_dir=args.image_dir)
    except (BenchmarkError, ManifestError, FileNotFoundError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from exc
    items = items[: args.limit]
    if args.grounding and not any(getattr(it, "boxes", ()) for it in items):
        raise CLIError(f"--grounding needs items with reference boxes; {args.benchmark} has none")
    return items


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a bundle on a benchmark and print (and save) the report and per-item predictions."""
    from training.eval.evaluate import markdown_table, predict, predictions_path, score, write_predictions
    from training.eval.items import BenchmarkError

    if not args.bundle:
        raise CLIError("--bundle is required")
    k, max_new = _mode_k(args)
    items = _eval_items(args)
    model = _load(args.bundle, args.device, scaffold=args.grounding)
    try:
        preds = predict(
            model,
            items,
            k=k,
            batch_size=args.batch_size,
            max_new_tokens=max_new,
            keep_latents=args.grounding,
            progress=len(items) > args.batch_size,
        )
        if args.grounding:
            from training.analysis import encoder_for
            from training.eval.gemex import grounding_per_item

            encoder = encoder_for(model.config, args.bundle, device=args.device)
            for p, g in zip(preds, grounding_per_item(preds, model.scaffold.vp, encoder)):
                p.grounding, p.latents = g, None
    except BenchmarkError as exc:
        raise CLIError(str(exc)) from exc
    report = score(preds)
    report.update(
        bundle=str(args.bundle),
        benchmark=args.benchmark,
        data=str(args.data or args.manifest),
        format=args.fmt,
        split=args.split,
        mode=args.mode,
        k=k,
        generated_tokens=round(sum(p.tokens for p in preds) / len(preds), 2),
    )
    from training.analysis import multihop_accuracy

    hops = multihop_accuracy(preds)
    if hops["n"]:
        report["multihop"] = hops
    if args.usage:
        report["latent_usage"] = _usage(model, items, k, max_new)
    title = f"{Path(args.bundle).name} on {args.benchmark} {args.split} ({args.mode}, k={k})"
    table = markdown_table(report, title) + _extra_lines(report)
    print(table)
    if args.out:
        report["predictions"] = str(write_predictions(preds, predictions_path(args.out)))
        _write(args.out, report, table)
        print(f"report: {args.out}; per-item predictions: {report['predictions']}")
    return 0


def _mode_k(args: argparse.Namespace) -> tuple[int | str, int | None]:
    """(K, max new tokens) of an evaluation mode; a clear error for a K the mode cannot take."""
    from vital_core.qtypes import parse_k

    if args.mode in ("direct", "cot"):
        if args.k not in (None, "0"):
            raise CLIError(f"--mode {args.mode} answers at K = 0; leave out --k (or use --mode latent)")
        if args.grounding or args.usage:
            raise CLIError("--grounding and --usage need --mode latent (they read the latent steps)")
        return 0, args.max_new_tokens or (160 if args.mode == "cot" else None)
    try:
        k = parse_k(args.k or "auto")
    except ValueError as exc:
        raise CLIError(f"--{exc}") from exc
    if args.grounding and k == 0:
        raise CLIError("--grounding needs --k >= 1 (the heatmaps come from the latent steps)")
    if args.usage and not isinstance(k, int):
        raise CLIError("--usage needs an integer --k >= 1 (every question runs the same number of steps)")
    return k, args.max_new_tokens


def _usage(model: Any, items: list, k: int | str, max_new_tokens: int | None = None) -> dict:
    from training.data.manifest import Sample
    from training.eval.usage import latent_usage

    samples = [s for s in items if isinstance(s, Sample)]
    if not samples or not isinstance(k, int) or k < 1:
        raise CLIError("--usage needs five-tuple questions and --k >= 1")
    try:
        return latent_usage(model, samples, k, max_new_tokens=max_new_tokens)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _extra_lines(report: dict) -> str:
    """Multi-hop accuracy with its interval, generated tokens, and the latent-usage test, as markdown."""
    from training.eval.stats import fmt_acc, fmt_diff

    lines = [f"generated tokens per question: {report['generated_tokens']}"]
    if "multihop" in report:
        lines.append(f"multi-hop closed accuracy: {fmt_acc(report['multihop']['interval'])}")
    u = report.get("latent_usage")
    if u:
        lines += [
            "",
            f"latent usage at K = {u['k']} (closed questions): natural {fmt_acc(u['natural'])}, "
            f"donor latents {fmt_acc(u['donor'])} ({fmt_diff(u['drop_donor'])} drop), noise of equal norm "
            f"{fmt_acc(u['noise'])} ({fmt_diff(u['drop_noise'])} drop); fed ||h|| / ||token embedding|| = "
            f"{u['norm_ratio']} (feed: {u['feed']})"
            + (
                f"; ||fed soft input|| / ||token embedding|| = {u['fed_input_norm'] / u['embedding_norm']:.2f}"
                if "fed_input_norm" in u
                else ""
            ),
        ]
    return "\n".join(lines) + "\n"


def run_rescore(args: argparse.Namespace) -> int:
    """Re-score a predictions file with the current metrics (no model)."""
    from training.eval.evaluate import markdown_table, rescore
    from training.eval.items import BenchmarkError

    try:
        report = rescore(args.predictions)
    except BenchmarkError as exc:
        raise CLIError(str(exc)) from exc
    table = markdown_table(report, f"rescored {Path(args.predictions).name}")
    print(table)
    if args.out:
        _write(args.out, report, table)
    return 0


def run_ablations_cmd(args: argparse.Namespace) -> int:
    """Run (or resume) an ablation sweep."""
    from training.ablations import AblationConfig, run_ablations, selected_arms
    from vital_core.config import ConfigError

    try:
        cfg = AblationConfig.from_yaml(args.config)
        if args.arms:
            cfg.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
            cfg.__post_init__()
        if args.seed is not None and args.seed != cfg.seed:
            cfg.seed = args.seed
            cfg.output_dir, cfg.results = (
                f"{cfg.output_dir}-seed{args.seed}",
                f"{cfg.results}-seed{args.seed}",
            )
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    if args.list:
        for arm in selected_arms(cfg):
            print(f"{arm.name:12s} {arm.label}  {json.dumps(arm.changes)}")
        return 0
    try:
        summary = run_ablations(cfg)
    except (FileNotFoundError, ConfigError, ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from exc
    print(Path(cfg.results).with_suffix(".md").read_text())
    print(f"results: {cfg.results}.json / .md ({len(summary['arms'])} arms)")
    return 0


def _samples(args: argparse.Namespace) -> list:
    from training.data.manifest import ManifestError, load_manifest

    try:
        samples = [s for s in load_manifest(args.manifest) if s.split == args.split]
    except (ManifestError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    if getattr(args, "multihop", False):
        from training.phantom.multihop import is_multihop

        samples = [s for s in samples if is_multihop(s.question_type, s.answer, s.question)]
    samples = samples[: args.limit]
    if not samples:
        what = "multi-hop samples" if getattr(args, "multihop", False) else "samples"
        raise CLIError(f"{args.manifest}: no {what} in split {args.split!r}")
    if args.k < 1:
        raise CLIError("--k must be >= 1")
    return samples


def run_collapse(args: argparse.Namespace) -> int:
    """Inter-step cosine similarity matrix of a bundle's latent states."""
    from training.analysis import collapse_png, collapse_summary, collapse_table, step_similarity
    from training.eval.evaluate import predict

    samples = _samples(args)
    if args.k < 2:
        raise CLIError("--k must be >= 2 for an inter-step matrix")
    model = _load(args.bundle, args.device)
    preds = predict(model, samples, k=args.k, keep_latents=True)
    matrix = step_similarity([p.latents for p in preds])
    summary = {**collapse_summary(matrix, len(preds)), "bundle": str(args.bundle), "split": args.split}
    table = collapse_table(summary, f"modality collapse: {Path(args.bundle).name}, K={args.k}")
    print(table)
    if args.out:
        out = Path(args.out)
        _write(out / "collapse.json", summary, table)
        collapse_png(matrix, out / "collapse.png", f"{Path(args.bundle).name}: cos(h_i, h_j), n={len(preds)}")
    return 0


def run_grounding(args: argparse.Namespace) -> int:
    """Per-step pointing accuracy and IoU of the /explain heatmaps against the phantom masks."""
    from training.analysis import encoder_for, grounding_from_predictions, grounding_table
    from training.eval.evaluate import predict

    fractions = _fractions(args.fractions, args.region_fraction)
    samples = _samples(args)
    model = _load(args.bundle, args.device, scaffold=True)
    encoder = encoder_for(model.config, args.bundle, device=args.device)
    preds = predict(model, samples, k=args.k, keep_latents=True)
    out = Path(args.out) if args.out else None
    if out is not None and args.examples:
        (out / "examples").mkdir(parents=True, exist_ok=True)
    report = grounding_from_predictions(
        preds,
        model.scaffold.vp,
        encoder,
        examples=args.examples,
        out=out / "examples" if out else None,
        scaffold=model.scaffold,
        tokenizer=model.tokenizer,
        fractions=fractions,
        region_fraction=args.region_fraction,
    )
    report.update(bundle=str(args.bundle), split=args.split)
    table = grounding_table(report, f"grounding: {Path(args.bundle).name}, K={args.k}")
    print(table)
    if out is not None:
        _write(out / "grounding.json", report, table)
    return 0
