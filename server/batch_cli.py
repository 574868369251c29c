"""`vital batch`: answer (or explain) every item of a manifest, a folder of images or a DICOMweb UID list,
locally or on a Ray cluster (--ray), writing JSONL (docs/scaling.md). Only light modules are imported
at registration."""

from __future__ import annotations

import argparse
from pathlib import Path

from vital_core.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital batch`."""
    p = sub.add_parser(
        "batch",
        help="answer every item of a manifest, image folder or DICOMweb UID list into JSONL",
        description=(
            "Answer (with --explain: explain) every item of INPUT with the server's decoding and the model's "
            "one latent loop, writing one JSON line per item to --out: id, question, answer, k, image, "
            "timings_ms (decode_image, model, stages), batch_size, error. INPUT is (a) a JSONL manifest "
            "(.jsonl: each row's id, image, question; a five-tuple manifest works), (b) a folder: every image "
            "file (PNG, JPEG, DICOM, NIfTI, ...) is one item, and so is a .zip of a DICOM series or a subfolder "
            "holding one (assembled into one volume); ids are relative paths; or (c) with --pacs URL, a text "
            "file of DICOMweb references, one per line: study/series (the series as one volume) or "
            "study/series/instance. Resumable: ids already in --out are skipped (a killed run loses at most "
            "the batch in flight). A bad item is recorded with its error and the run goes on. Deployment "
            "settings (VITAL_K_DEFAULT, VITAL_MAX_NEW_TOKENS, VITAL_STEP_MODE, ...) apply as for `vital serve`."
        ),
    )
    p.add_argument("input", type=Path, help="manifest (.jsonl), folder, or UID list (with --pacs)")
    p.add_argument("--out", type=Path, required=True, help="JSONL output (appended to; resumes)")
    p.add_argument("--question", help="the question for every item of a folder or UID list")
    p.add_argument("--explain", action="store_true", help="also decode each latent step, as /explain does")
    p.add_argument("--pacs", metavar="URL", help="DICOMweb base URL the UID list is retrieved from")
    p.add_argument("--bundle", help="bundle directory (VITAL_BUNDLE; default bundles/vital-tiny)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (VITAL_DEVICE)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (VITAL_DTYPE)")
    p.add_argument(
        "--k", help='latent steps: 0..K_max, or "auto" (from the question type); default: the bundle\'s'
    )
    p.add_argument("--max-new-tokens", type=int, help="answer token cap (default as the server's)")
    p.add_argument(
        "--axis", choices=("axial", "coronal", "sagittal"), help="plane of volumes (default axial)"
    )
    p.add_argument("--slice", type=int, help="slice index along --axis (default: the middle)")
    p.add_argument(
        "--window", help="window preset of CT/MR (abdomen, lung, bone, brain, soft_tissue, percentile)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="items answered together (default 4)")
    p.add_argument("--top-k", type=int, default=5, help="nearest patches per step with --explain (default 5)")
    p.add_argument("--limit", type=int, help="answer at most N not-yet-done items, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster (e.g. 10.0.0.1:6379, or auto) via Ray Data, one model per actor; "
        "needs the optional extra: pip install -e '.[ray]'",
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        help="actors (models) with --ray (default: the cluster's GPUs, one each; 1 without GPUs)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the input, load the bundle as the server does, answer every item not yet in --out."""
    from pydantic import ValidationError

    from server import explain as explain_mod
    from server.batch import Answerer, run_batch
    from server.batch_inputs import BatchInputError
    from server.settings import Settings
    from vital_core.imaging import ImagingError, ImagingSpec

    if args.batch_size < 1:
        raise CLIError("--batch-size must be at least 1")
    if args.limit is not None and args.limit < 0:
        raise CLIError("--limit must be non-negative")
    if args.top_k < 1:
        raise CLIError("--top-k must be at least 1")
    if args.ray_actors is not None and (args.ray is None or args.ray_actors < 1):
        raise CLIError("--ray-actors needs --ray ADDRESS and must be at least 1")
    if args.out.is_dir():
        raise CLIError(f"--out {args.out} is a folder; give a JSONL file")
    try:
        spec = ImagingSpec(
            **{
                k: v
                for k, v in {"axis": args.axis, "slice": args.slice, "window": args.window}.items()
                if v is not None
            }
        )
    except ImagingError as exc:
        raise CLIError(exc.message) from exc
    try:
        items = _items(args)
    except BatchInputError as exc:
        raise CLIError(str(exc)) from exc
    overrides = {"bundle": args.bundle, "device": args.device, "dtype": args.dtype}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise CLIError(f"invalid settings: {exc}") from exc
    if not (Path(settings.bundle) / "vital.yaml").is_file():
        raise CLIError(f"no bundle at {settings.bundle} (vital.yaml missing); give --bundle DIR")
    if args.explain and (reason := explain_mod.unavailable_reason(settings, loaded=False)):
        raise CLIError(f"--explain: {reason[2]}")
    # K and the token cap are checked against the bundle's config before any weights load (with --ray the
    # driver loads none: its actors do).
    options = _options(args, _config_only(settings).config, settings, spec)
    if args.ray is None:
        stats = run_batch(Answerer.load(settings, args.explain), items, args.out, options)
    else:
        stats = _run_on_ray(args, settings, items, options)
    rate = stats.written / stats.seconds if stats.seconds else 0.0
    steady = stats.steady_rate()
    after = (
        f"; after the first batch ({stats.first_batch_s:.1f} s): {steady:.2f} items/s"
        if steady is not None
        else ""
    )
    print(
        f"{stats.items} items: {stats.skipped} already in {args.out}, {stats.answered} answered, "
        f"{stats.errors} errors, in {stats.seconds:.1f} s ({rate:.2f} items/s{after})"
    )
    return 0


def _options(args: argparse.Namespace, config, settings, spec):  # -> server.batch.BatchOptions
    """The run's options; K and the token cap checked against the bundle and the deployment as the server does."""
    from server.batch import BatchOptions

    limit = min(config.latent.max_new_tokens, settings.max_new_tokens)
    max_new = limit if args.max_new_tokens is None else args.max_new_tokens
    if not 1 <= max_new <= settings.max_new_tokens:
        raise CLIError(
            f"--max-new-tokens must be between 1 and {settings.max_new_tokens} (VITAL_MAX_NEW_TOKENS)"
        )
    return BatchOptions(
        k=_k(args.k, config.latent.k_max),
        max_new_tokens=max_new,
        spec=spec,
        batch_size=args.batch_size,
        top_k=args.top_k,
        limit=args.limit,
        progress=not args.no_progress,
    )


def _items(args: argparse.Namespace):
    from server.batch_inputs import from_folder, from_manifest, from_uids

    src: Path = args.input
    if not src.exists():
        raise CLIError(f"input {src} does not exist")
    if src.is_dir():
        if not args.question:
            raise CLIError("a folder input needs --question (the question asked of every image)")
        return from_folder(src, args.question, exclude=(args.out,))
    if args.pacs:
        if not args.question:
            raise CLIError("a UID list needs --question (the question asked of every series or instance)")
        return from_uids(src, args.question, args.pacs)
    if src.suffix.lower() in (".jsonl", ".json"):
        if args.question:
            raise CLIError("a manifest's rows carry their own questions; drop --question")
        return from_manifest(src)
    raise CLIError(f"{src}: not a folder or a .jsonl manifest; a DICOMweb UID list needs --pacs URL")


def _k(value: str | None, k_max: int) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        raise CLIError(f'--k must be an integer 0..{k_max} or "auto", got {value!r}') from None
    if not 0 <= k <= k_max:
        raise CLIError(f'--k must be between 0 and {k_max}, or "auto"')
    return k


def _run_on_ray(args: argparse.Namespace, settings, items, options):
    """Connect to the cluster and run there: one actor per GPU (or --ray-actors), each with one model."""
    from server.batch import pending
    from server.batch_ray import run_batch_ray
    from server.ray_common import connect

    todo, stats = pending(items, args.out, options)
    if not todo:  # nothing left: no cluster needed
        return stats
    ray = connect(args.ray)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and settings.device == "auto":
        settings = settings.model_copy(update={"device": "cuda"})
    actors = args.ray_actors or max(1, gpus)
    return run_batch_ray(settings, items, args.out, options, actors=actors, explain=args.explain)


def _config_only(settings):
    """The bundle's config with the deployment's K settings, without the weights, as `.config` like a loaded
    model's (what `apply_k_settings` edits)."""
    from types import SimpleNamespace

    from server.app import apply_k_settings
    from vital_core.bundle import read_config

    model = SimpleNamespace(config=read_config(settings.bundle))
    apply_k_settings(model, settings)
    return model
