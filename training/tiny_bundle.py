"""`vital build-tiny-bundle`: make the embedded `vital-tiny` bundle from nothing, reproducibly, on CPU.

1. phantom data (training/phantom, the compositional task) and a held-out multi-hop test set of an unseen
   seed, with its gates (`vital phantom --audit`) → 1b. the tiny MedSigLIP encoder, trained on the phantom's
   image–report pairs and frozen (training/encoder_train.py) → 2. ROI targets with it (index_builder) →
3. perception (ours): the random tiny backbone, its vision tower distilled from the encoder, learns dense
   captions of the scenes — our stand-in for a pretrained MLLM → 4. stage 0 (ours): explicit reasoning
   first, the backbone writes each question's chain, then its answer → 5. the paper's recipe on top, as a
   Coconut-style curriculum: frozen backbone + LoRA + both heads, stage c turns the first c sentences
   into c latent steps, then merge → 6. a FAISS index of reference patches → 7. scores: the test split, the
   held-out multi-hop set at K = 4 and K = 0 and stage 0's written chains, with 95 % intervals.
Every step is resumable: finished data, stores and checkpoints are reused on a re-run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from vital_core.cli import CLIError

log = logging.getLogger("vital.tiny")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital build-tiny-bundle`."""
    p = sub.add_parser(
        "build-tiny-bundle",
        help="train the embedded vital-tiny bundle from scratch (CPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="bundles/vital-tiny", help="bundle directory to write")
    p.add_argument("--work", default="data/tiny-build", help="working directory (data, stores, runs)")
    p.add_argument("--n", type=int, default=12000, help="phantom samples to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes for data generation")
    p.add_argument("--perception-recipe", default="configs/tiny-perception.yaml")
    p.add_argument("--stage0-recipe", default="configs/tiny-stage0.yaml")
    p.add_argument("--recipe", default="configs/tiny.yaml")
    p.add_argument(
        "--heldout", type=int, default=1152, help="multi-hop questions in the held-out test set (seed + 1)"
    )
    p.add_argument("--index-images", type=int, default=100, help="reference images in the FAISS index")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N test samples")
    p.add_argument("--encoder-steps", type=int, default=1000, help="training steps of the tiny MedSigLIP")
    p.add_argument("--encoder-images", type=int, default=1200, help="train images for the tiny MedSigLIP")
    p.set_defaults(func=run)
    from training.cli.encoder import register as register_encoder

    register_encoder(sub)


def run(args: argparse.Namespace) -> int:
    """Run the whole pipeline."""
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for f in (args.perception_recipe, args.stage0_recipe, args.recipe):
        if not Path(f).is_file():
            raise CLIError(f"recipe {f} not found (run from the repository root)")
    manifest = _phantom(work / "phantom", args)
    heldout, gates = _heldout(work, manifest, args)
    encoder_dir = _encoder(manifest, work / "encoder", args)
    roi = _roi_store(manifest, work / "roi", args.seed, encoder_dir)
    sets = [f"model.align_encoder={encoder_dir}", f"data.manifest={manifest.with_name('captions.jsonl')}"]
    seen, _ = _train(args.perception_recipe, work / "perception", manifest, roi, args, sets=sets)
    stage0_bundle, stage0_model = _train(args.stage0_recipe, work / "stage0", manifest, roi, args, init=seen)
    _, model = _train(args.recipe, work / "latent", manifest, roi, args, init=stage0_bundle)
    index_dir = _index(encoder_dir, manifest, work, args)
    scores = _scores(model, stage0_model, manifest, heldout, args.eval_limit)
    scores["gates"] = gates
    from training.export import export_bundle
    from training.recipe import Recipe

    recipe = Recipe.from_yaml(args.recipe, [f"model.init_bundle={stage0_bundle}"])
    out = export_bundle(
        model,
        recipe,
        args.out,
        scores=scores,
        command=" ".join(["vital", *sys.argv[1:]]) if sys.argv else None,
        encoder_dir=encoder_dir,
        index_dir=index_dir,
        phantom_task="compositional",
    )
    (work / "scores.json").write_text(json.dumps(scores, indent=2))
    log.info("vital-tiny written to %s in %.1f min", out, (time.perf_counter() - t0) / 60)
    print(
        json.dumps(
            {
                "bundle": str(out),
                "minutes": round((time.perf_counter() - t0) / 60, 1),
                "scores": {
                    k: v["overall"] for k, v in scores.items() if isinstance(v, dict) and "overall" in v
                },
            }
        )
    )
    return 0


def _heldout(work: Path, manifest: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """The held-out multi-hop test set (seed + 1, every question multi-hop) and its gates."""
    from training.phantom import generate
    from training.phantom.audit import audit

    out = work / "heldout"
    meta = out / "phantom.json"
    want = (args.heldout, args.seed + 1)
    if not (
        meta.is_file()
        and (json.loads(meta.read_text()).get("n"), json.loads(meta.read_text()).get("seed")) == want
    ):
        generate(
            out,
            n=args.heldout,
            seed=args.seed + 1,
            size=128,
            workers=args.workers,
            splits=(0, 0, 1),
            multihop_only=True,
        )
    report = audit(out, "test", manifest.parent)
    gates = {k: report[k] for k in ("n_multihop", "n_fit", "figures", "gates", "passed", "all_passed")}
    (work / "gates.json").write_text(json.dumps(report, indent=2))
    if not report["all_passed"]:
        log.warning("held-out set: a gate failed: %s", report["passed"])
    return out / "manifest.jsonl", gates


def _phantom(out: Path, args: argparse.Namespace) -> Path:
    from training.phantom import generate

    manifest = out / "manifest.jsonl"
    meta = out / "phantom.json"
    if manifest.is_file() and meta.is_file():
        m = json.loads(meta.read_text())
        from training.phantom.generate import FORMAT_VERSION

        if (m.get("n"), m.get("seed"), m.get("format_version")) == (args.n, args.seed, FORMAT_VERSION):
            log.info("phantom data already at %s", out)
            return manifest
    return generate(out, n=args.n, seed=args.seed, size=128, workers=args.workers)


def _encoder(manifest: Path, out: Path, args: argparse.Namespace) -> Path:
    """The tiny MedSigLIP, trained on the phantom's train split (reused when already there)."""
    from training.encoder_train import train_encoder

    info = out / "encoder_train.json"
    done = json.loads(info.read_text()) if info.is_file() else {}
    if (done.get("steps"), done.get("images")) == (args.encoder_steps, args.encoder_images):
        log.info("trained encoder already at %s", out)
        return out
    return train_encoder(
        manifest,
        out,
        steps=args.encoder_steps,
        images=args.encoder_images,
        seed=args.seed,
        phantom_seed=args.seed,
    )


def trained_encoder(encoder_dir: Path, seed: int = 0):
    """The frozen patch encoder (vision tower) of a trained tiny MedSigLIP directory."""
    import dataclasses

    from index_builder.encoder import load_encoder
    from vital_core.presets import tiny

    return load_encoder(dataclasses.replace(tiny().encoder, path=str(encoder_dir)), device="cpu", seed=seed)


def _roi_store(manifest: Path, out: Path, seed: int, encoder_dir: Path) -> Path:
    from index_builder.roi import ROIParams
    from index_builder.samples import read_manifest, read_step_masks
    from index_builder.store import FeatureStore, extract_to_store

    refs = read_manifest(manifest, require_mask=True) + read_step_masks(manifest)
    params = ROIParams()
    # the weights' hash, not just their folder: a retrained encoder must not reuse finished shards
    weights = hashlib.sha256((encoder_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    spec = {"encoder": str(encoder_dir), "weights": weights, "seed": seed, "params": repr(params)}
    done = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    if done.get("spec", {}).get("weights") == weights and len(FeatureStore(out)) == len(refs):
        log.info("ROI store already at %s", out)
        return out
    extract_to_store(trained_encoder(encoder_dir, seed), refs, out, params, spec=spec)
    return out


def _train(
    recipe_file: str,
    run_dir: Path,
    manifest: Path,
    roi: Path,
    args,
    init: Path | None = None,
    sets: list[str] | None = None,
):
    from training.export import export_bundle
    from training.recipe import Recipe
    from training.trainer import Trainer

    sets = [
        f"data.manifest={manifest}",
        f"data.roi_store={roi}",
        f"output_dir={run_dir}",
        f"seed={args.seed}",
        *(sets or []),
    ]
    if init is not None:
        sets.append(f"model.init_bundle={init}")
    inputs = [manifest.parent / "phantom.json"] + ([roi / "manifest.json"] if init is not None else [])
    _fresh_if_inputs_changed(run_dir, recipe_file, sets, inputs)  # stage 0 reads no ROI features
    recipe = Recipe.from_yaml(recipe_file, sets)
    trainer = Trainer(recipe, mode="resume")  # every step of the build resumes where it stopped
    trainer.run()
    bundle = export_bundle(
        trainer.model, recipe, run_dir / "bundle", command=f"vital train --recipe {recipe_file}"
    )
    return bundle, trainer.model


def _fresh_if_inputs_changed(run_dir: Path, recipe_file: str, sets: list[str], files: list[Path]) -> None:
    """Start a run over when its inputs (recipe, data, ROI store) changed since its checkpoints were written:
    resuming would otherwise re-export weights trained on the old ones."""
    import shutil

    h = hashlib.sha256(Path(recipe_file).read_bytes() + "\n".join(sets).encode())
    for f in files:
        h.update(f.read_bytes() if f.is_file() else b"-")
    key, stamp = h.hexdigest()[:16], run_dir / "inputs.sha256"
    stale = not stamp.is_file() or stamp.read_text().strip() != key
    if stale and (any(run_dir.glob("ckpt-*")) or (run_dir / "final.safetensors").is_file()):
        log.info("inputs of %s changed: training it again", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")


def _index(encoder_dir: Path, manifest: Path, work: Path, args) -> Path:
    from index_builder.index_build import build_patch_index
    from index_builder.samples import read_manifest

    enc = trained_encoder(encoder_dir, args.seed)
    rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    train_ids = {r["id"] for r in rows if r["split"] == "train"}
    refs = [r for r in read_manifest(manifest) if r.id in train_ids][: args.index_images]
    index_dir = work / "index"
    build_patch_index(enc, refs, index_dir, use_gpu=False, seed=args.seed, progress=True)
    return index_dir


def _scores(model, stage0_model, manifest: Path, heldout: Path, limit: int | None) -> dict:
    """Test split per type (latent, K auto; stage 0 at K = 0), and the held-out multi-hop set: latent at K = 4
    and K = 0, stage 0's written chains, their paired differences, tokens generated, latent usage."""
    from training.cli.train import evaluate_model
    from training.data.manifest import load_manifest
    from training.eval.evaluate import predict
    from training.eval.stats import accuracy, paired_difference
    from training.eval.usage import latent_usage
    from training.phantom.multihop import is_multihop

    def hits(preds) -> list[bool]:
        from training.data.manifest import normalize_answer

        return [normalize_answer(p.answer) == normalize_answer(p.item.answer) for p in preds]

    hops = [s for s in load_manifest(heldout) if is_multihop(s.question_type, s.answer, s.question)][:limit]
    runs = {
        "latent_k4": predict(model, hops, k=4),
        "latent_k0": predict(model, hops, k=0),
        "stage0_cot": predict(stage0_model, hops, k=0, max_new_tokens=160),
    }
    h = {name: hits(p) for name, p in runs.items()}
    multihop = {name: {**accuracy(v), "generated_tokens": _mean_tokens(runs[name])} for name, v in h.items()}
    multihop["k4_minus_k0"] = paired_difference(h["latent_k4"], h["latent_k0"])
    multihop["cot_minus_k0"] = paired_difference(h["stage0_cot"], h["latent_k0"])
    return {
        "test_split_k_auto": evaluate_model(model, str(manifest), "test", "auto", limit),
        "stage0_test_split_cot": evaluate_model(
            stage0_model, str(manifest), "test", "0", limit, max_new_tokens=160
        ),
        "heldout_multihop": multihop,
        "heldout_latent_usage": latent_usage(model, hops[: min(len(hops), 300)], 4),
    }


def _mean_tokens(preds) -> float:
    return round(sum(p.tokens for p in preds) / max(len(preds), 1), 2)
