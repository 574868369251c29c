"""The arms E5-E12 of issue 30's experiment log (bench/results/reasoning-experiments.md, section 8): each is a
few steps of the `vital build-tiny-bundle` pipeline (training.tiny_bundle) with recipe overrides. E10-E12 ran
from this file; E5-E9 ran from one-off scripts with the same steps and overrides, gathered here afterwards.
Validation only; scoring is `vital eval --split val` (commands in the log).

    python bench/reasoning_arms.py e5-chain    # data + tiny MedSigLIP, perception 3,300 steps, stage 0 chain 1,800
    python bench/reasoning_arms.py e5-answer   # the same stage 0 budget, direct answers
    python bench/reasoning_arms.py e6          # 4-layer LM: perception 1,800 steps, stage 0 chain 600
    python bench/reasoning_arms.py e7          # stage 0 chain from E6's perception with caption replay, 1,200
    python bench/reasoning_arms.py e8          # latent curriculum (configs/tiny.yaml) on E5's chain stage 0
    python bench/reasoning_arms.py e9          # latent curriculum on E7's stage 0
    python bench/reasoning_arms.py e10         # E8 with the fed latent rescaled (latent.feed: embed_rms)
    python bench/reasoning_arms.py e11         # E7 at 3 epochs of the replay mix (1,800 steps, E5's length)
    python bench/reasoning_arms.py e12         # the replay mix on E5's 2-layer perception, 1,800 steps
    python bench/reasoning_arms.py e13-perception  # caption v3 (lesion size rank, leftmost/uppermost): E6's
                                                   # 4-layer perception, 1,800 steps, on E5's images
    python bench/reasoning_arms.py e13-chain   # E7's stage 0 (caption replay, 1,200 steps) on it
    python bench/reasoning_arms.py e13-answer  # the same budget and replay, direct answers (caption = answer)
    python bench/reasoning_arms.py e13-latent  # the latent curriculum (configs/tiny.yaml) on e13-chain
    python bench/reasoning_arms.py e14-merge2  # E13's perception at 600 steps (the pair's control)
    python bench/reasoning_arms.py e14-merge1  # the same with no 2 x 2 patch merger: 256 image tokens, not 64
    python bench/reasoning_arms.py e15         # e14-merge1 for 1,200 steps

Run one at a time per core (`taskset -c N`, OMP_NUM_THREADS=1); later arms read earlier arms' outputs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from training import tiny_bundle as tb

WORK = Path("data/e5/work")
ARMS = (
    "e5-chain",
    "e5-answer",
    "e6",
    "e7",
    "e8",
    "e9",
    "e10",
    "e11",
    "e12",
    "e13-perception",
    "e13-chain",
    "e13-answer",
    "e13-latent",
    "e14-merge2",
    "e14-merge1",
    "e15",
)
WORK13 = Path("data/e13/work")


def _base(args: argparse.Namespace) -> tuple[Path, Path]:
    """Phantom data (12,000, seed 0), the held-out set and its gates, the tiny MedSigLIP: the bundle's own."""
    manifest = WORK / "phantom" / "manifest.jsonl"
    if not manifest.is_file():  # the arms are pinned to E5's data, whatever format later versions write
        manifest = tb._phantom(WORK / "phantom", args)
    tb._heldout(WORK, manifest, args)
    return manifest, tb._encoder(manifest, WORK / "encoder", args)


def _perception(
    manifest: Path, enc: Path, args, out: Path, epochs: int, layers: int | None = None, extra=None
) -> Path:
    sets = [
        *(extra or []),
        f"model.align_encoder={enc}",
        f"data.manifest={manifest.with_name('captions.jsonl')}",
        f"curriculum.epochs=[{epochs}]",  # 300 steps per epoch at batch 32
    ]
    if layers:
        sets.append(f"model.overrides.backbone.arch.text_config.num_hidden_layers={layers}")
    no_roi = WORK / "roi-unused"  # backbone stages have no visual loss
    bundle, _ = tb._train("configs/tiny-perception.yaml", out, manifest, no_roi, args, sets=sets)
    return bundle


def _stage0(
    manifest: Path, init: Path, out: Path, args, target: str, epochs: int, extra: list[str] | None = None
) -> Path:
    sets = [f"curriculum.epochs=[{epochs}]", f"data.target={target}", *(extra or [])]
    bundle, _ = tb._train(
        "configs/tiny-stage0.yaml", out, manifest, WORK / "roi-unused", args, init=init, sets=sets
    )
    return bundle


def _replay_manifest(manifest: Path, target: str = "chain") -> Path:
    """The question manifest plus every train caption, the caption written as the chain, then a fixed answer
    (a manifest row needs 1-4 reasoning sentences; the caption's two are its structures and its lesions).
    For a direct-answer stage 0 (`target="answer"`) the caption stays its row's answer instead, so both arms
    see the same captions."""
    out = manifest.with_name("mixed-e7.jsonl" if target == "chain" else "mixed-answer.jsonl")
    rows = manifest.read_text().splitlines()
    for line in manifest.with_name("captions.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "train":
            rows.append(json.dumps({**r, "answer": "Described above."} if target == "chain" else r))
    out.write_text("\n".join(rows) + "\n")
    return out


def _phantom_v3() -> Path:
    """E5's phantom images and questions (hard links) with captions written again by caption v3."""
    from training.phantom.captions import write_captions

    src, dst = WORK / "phantom", WORK13 / "phantom"
    if not (dst / "captions.jsonl").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("images", "masks"):
            if not (dst / name).exists():
                shutil.copytree(src / name, dst / name, copy_function=os.link)
        for name in (
            "manifest.jsonl",
            "scenes.jsonl",
            "phantom.json",
            "train.jsonl",
            "val.jsonl",
            "test.jsonl",
        ):
            shutil.copy2(src / name, dst / name)
        write_captions(dst)
    return dst / "manifest.jsonl"


def _latent(manifest: Path, init: Path, out: Path, args, sets: list[str] | None = None) -> Path:
    roi = tb._roi_store(manifest, WORK / "roi", args.seed, WORK / "encoder")
    bundle, _ = tb._train("configs/tiny.yaml", out, manifest, roi, args, init=init, sets=sets)
    return bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arm", choices=ARMS)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = argparse.Namespace(
        n=12000, seed=0, workers=2, heldout=1152, encoder_steps=1000, encoder_images=1200, eval_limit=None
    )
    manifest, enc = _base(args)
    seen2 = WORK / "perception" / "bundle"
    seen4 = Path("data/e6/work/perception/bundle")
    if a.arm in ("e5-chain", "e5-answer"):
        seen2 = _perception(manifest, enc, args, WORK / "perception", epochs=11)
        target = a.arm.split("-")[1]
        _stage0(manifest, seen2, WORK / f"stage0-{target}", args, target, epochs=6)
    elif a.arm == "e6":
        seen4 = _perception(manifest, enc, args, Path("data/e6/work/perception"), epochs=6, layers=4)
        _stage0(manifest, seen4, Path("data/e6/work/stage0-chain"), args, "chain", epochs=2)
    elif a.arm in ("e7", "e11"):
        mixed = _replay_manifest(manifest)
        epochs = 2 if a.arm == "e7" else 3
        _stage0(mixed, seen4, Path(f"data/{a.arm}/work/stage0-chain"), args, "chain", epochs=epochs)
    elif a.arm == "e12":
        _stage0(
            _replay_manifest(manifest), seen2, Path("data/e12/work/stage0-chain"), args, "chain", epochs=3
        )
    elif a.arm.startswith("e13"):
        m13 = _phantom_v3()
        seen = WORK13 / "perception" / "bundle"
        if a.arm == "e13-perception":
            _perception(m13, enc, args, WORK13 / "perception", epochs=6, layers=4)
        elif a.arm in ("e13-chain", "e13-answer"):
            target = a.arm.split("-")[1]
            # caption v3 rows run to ~90 tokens: room for all of them (both arms alike)
            room = ["data.max_answer_tokens=128"]
            mixed = _replay_manifest(m13, target)
            _stage0(mixed, seen, WORK13 / f"stage0-{target}", args, target, epochs=2, extra=room)
        else:
            _latent(m13, WORK13 / "stage0-chain" / "bundle", WORK13 / "latent", args)
    elif a.arm.startswith(("e14", "e15")):
        merge = 2 if a.arm == "e14-merge2" else 1
        extra = [f"model.overrides.backbone.arch.vision_config.spatial_merge_size={merge}"]
        epochs = 4 if a.arm == "e15" else 2
        _perception(_phantom_v3(), enc, args, Path(f"data/e14/{a.arm}"), epochs=epochs, layers=4, extra=extra)
    elif a.arm == "e8":
        _latent(manifest, WORK / "stage0-chain" / "bundle", Path("data/e8/work/latent"), args)
    elif a.arm == "e9":
        _latent(manifest, Path("data/e7/work/stage0-chain/bundle"), Path("data/e9/work/latent"), args)
    else:
        feed = ["model.overrides.latent.feed=embed_rms"]
        _latent(manifest, WORK / "stage0-chain" / "bundle", Path("data/e10/work/latent"), args, sets=feed)


if __name__ == "__main__":
    main()
