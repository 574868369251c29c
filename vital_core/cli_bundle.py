"""`vital bundle` — inspect, verify and create bundles."""

from __future__ import annotations

import argparse
import json

from vital_core.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital bundle {info,verify,init}`."""
    p = sub.add_parser("bundle", help="inspect, verify or create model bundles", description=__doc__)
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    info = bsub.add_parser("info", help="print a bundle's config summary and manifest")
    info.add_argument("path", help="bundle directory")
    info.set_defaults(func=_info)

    verify = bsub.add_parser("verify", help="check every file against the manifest's sha256")
    verify.add_argument("path", help="bundle directory")
    verify.set_defaults(func=_verify)

    init = bsub.add_parser(
        "init",
        help="write an untrained bundle from a preset or config (random weights for from-config parts)",
        description="Build a model from a preset or YAML config with fresh LoRA and scaffolding and save it. "
        "Useful for smoke tests and latency work; answers are meaningless until trained.",
    )
    init.add_argument("out", help="output bundle directory")
    src = init.add_mutually_exclusive_group()
    src.add_argument("--preset", default="tiny", help="preset name (tiny, qwen3-vl-8b); default tiny")
    src.add_argument("--config", help="YAML VitalConfig file")
    init.add_argument("--no-scaffold", action="store_true", help="omit the scaffolding heads")
    init.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    init.set_defaults(func=_init)


def _info(args: argparse.Namespace) -> int:
    from vital_core.bundle import BundleError, read_config, read_manifest

    try:
        cfg, man = read_config(args.path), read_manifest(args.path)
    except BundleError as exc:
        raise CLIError(str(exc)) from exc
    total = sum(f["bytes"] for f in man["files"].values())
    summary = {
        "name": cfg.name,
        "preset": cfg.preset,
        "merged": man.get("merged"),
        "scaffold": "scaffold.safetensors" in man["files"],
        "k_default": cfg.latent.k_default,
        "k_max": cfg.latent.k_max,
        "bytes": total,
        "created": man.get("created"),
        "versions": man.get("versions"),
        "provenance": man.get("provenance"),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from vital_core.bundle import BundleError, verify_bundle

    try:
        checked = verify_bundle(args.path)
    except BundleError as exc:
        raise CLIError(str(exc)) from exc
    print(f"ok: {len(checked)} files match the manifest")
    return 0


def _init(args: argparse.Namespace) -> int:
    from vital_core.bundle import BundleError, save_bundle
    from vital_core.config import ConfigError, VitalConfig
    from vital_core.model import build_model
    from vital_core.presets import preset

    try:
        cfg = VitalConfig.from_yaml(args.config) if args.config else preset(args.preset)
        model = build_model(cfg, lora=True, scaffold=not args.no_scaffold)
        out = save_bundle(
            model,
            args.out,
            overwrite=args.overwrite,
            provenance={"command": "vital bundle init", "trained": False, "seed": cfg.seed},
        )
    except (BundleError, ConfigError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote untrained bundle {out}")
    return 0
