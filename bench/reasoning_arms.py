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
    python bench/reasoning_arms.py e16-hop1    # hop 1 alone ("Which is the largest lesion in this CT scan?"),
                                               # direct answers, 1,200 steps on E13's perception
    python bench/reasoning_arms.py e16-hop1-nomerge  # the same on E15's no-merger perception
    python bench/reasoning_arms.py e19-hop1-hosts  # E16-hop1 over the three host structures ("Which is the
                                                   # leftmost organ in this CT scan?")
    python bench/reasoning_arms.py e20-chain   # hop 1 over the organs: "which lesion in this CT scan lies in
                                               # the leftmost organ?", on E13's hosted scenes; stage 0 as E13's
    python bench/reasoning_arms.py e20-answer  # the same rows, budget and replay, direct answers
    python bench/reasoning_arms.py e20-gates   # the issue's gates on E20's questions (no training)
    python bench/reasoning_arms.py e21-chain   # E20's questions, chain v3: hop 1, then every lesion's organ in
                                               # the captions' direction, then the lookup
    python bench/reasoning_arms.py e21-latent  # the latent curriculum (configs/tiny.yaml) on e21-chain, on its
                                               # questions without the captions; semantic supervision only
                                               # (these rows have no per-hop masks for the visual target)
    python bench/reasoning_arms.py e22-data    # phantom format 5 (organ-hop multi-hop questions from the
                                               # generator), 12,000 images, seed 0; the seed-1 held-out
                                               # multi-hop set and its gates (no training)
    python bench/reasoning_arms.py e22-chain   # stage 0 as E21 (E13's perception, caption replay, 2 epochs)
                                               # on format 5's questions
    python bench/reasoning_arms.py e22-answer  # the same rows, budget and replay, direct answers
    python bench/reasoning_arms.py e23-chain   # e22-chain continued one epoch on its mix plus 6,000 more
                                               # organ-hop questions (seed 2) and their captions
    python bench/reasoning_arms.py e23-answer  # e22-answer continued on the same rows, direct answers
    python bench/reasoning_arms.py e23-latent  # the latent curriculum (configs/tiny.yaml) on e23-chain, on
                                               # format 5's questions, dual supervision (per-hop masks)
    python bench/reasoning_arms.py e23-latent-sem  # the same, semantic supervision only (loss.visual=false)
    python bench/reasoning_arms.py e25-latent-rms  # e23-latent with the fed state rescaled to the token-
                                                   # embedding RMS (model.overrides.latent.feed=embed_rms)
    python bench/reasoning_arms.py e24-latent  # e23-latent on format 5's questions plus the 6,000 extra
                                               # organ-hop questions E23's stage 0 saw (dual supervision)
    python bench/reasoning_arms.py e26-chain   # e23-chain continued one epoch on its mix, the replayed captions
                                               # written with holds=True (an organ names its lesion)
    python bench/reasoning_arms.py e26-answer  # e23-answer, the same rows and budget, direct answers
    python bench/reasoning_arms.py e26-latent  # e23-latent's curriculum on e26-chain (dual supervision)
    python bench/reasoning_arms.py e26-plain-chain  # the control: e23-chain one more epoch on E23's mix as it
                                                    # was (plain captions), E26's budget
    python bench/reasoning_arms.py e27-chain   # e26-chain with chain v4: sentence 2 is the one organ → lesion
                                               # read ("The liver is the organ with the abscess.")
    python bench/reasoning_arms.py e27-latent  # e23-latent's curriculum on e27-chain, format 5's questions
                                               # with chain v4 (step masks organ, lesion, lesion, lesion)
    python bench/reasoning_arms.py e27-latent-sem  # the same, semantic supervision only (loss.visual=false)
    python bench/reasoning_arms.py e28-chain   # e27-chain with chain v5: no sentence names what an earlier one
                                               # resolved ("It is the organ with the abscess.")
    python bench/reasoning_arms.py e28-latent  # e23-latent's curriculum on e28-chain, chain v5 (dual supervision)
    python bench/reasoning_arms.py e28-stage1  # curriculum stage 1 alone on e28-chain (300 steps): sentence 1
                                               # latent, the rest written; score at K = 1 with --usage
    python bench/reasoning_arms.py e28-stage1-r64  # the same with LoRA rank 64 (alpha 128) instead of 8
    python bench/reasoning_arms.py e28-stage1-full  # e28-stage1 with every backbone weight trained (Coconut's setting)
    python bench/reasoning_arms.py e28-latent-full  # e28-latent's whole curriculum with the backbone trained
    python bench/reasoning_arms.py e28-stage1-sem10  # e28-stage1-full with the semantic loss weighted 10x: does
                                               # direct supervision make h_1 hold hop 1's structure?
    python bench/reasoning_arms.py e28-stage1-rms  # e28-stage1 with the fed state at the token-embedding norm
                                               # (E25 tried it only on a chain whose stage 1 needs no latent)
    python bench/reasoning_arms.py e28-stage1-cont  # two more epochs of stage 1 on e28-stage1-full (its heads
                                               # kept: the decoder had not yet learned to read its prefix)
    python bench/reasoning_arms.py e28-stage1-warm  # stage 1 alone, 1.5 epochs, the first 100 steps heads only
    python bench/reasoning_arms.py e28-stage1-c4  # the same with sentence 1 as four fed-back states (score at K = 4)
    python bench/reasoning_arms.py e28-stage1-words  # e28-stage1 with loss.lambda_words=1: h_1's LM head must
                                               # spread its mass over sentence 1's words (the organ among them)
    python bench/reasoning_arms.py e28-stage1-words-full  # the same with the whole backbone trained
    python bench/reasoning_arms.py e28-stage1-words-c2  # two states for sentence 1: h_1 says its words, h_2
                                               # predicts the written rest's first token (score at K = 2)
    python bench/reasoning_arms.py e28-stage1-words-c2-full  # the same with the whole backbone trained
    python bench/reasoning_arms.py e28-stage1-words-c2-cont  # two more epochs of it (does the rest learn to read?)
    python bench/reasoning_arms.py e28-stage1-distill  # words c = 2 full, and the written rest's states distilled
                                               # from the K = 0 written chain's (loss.lambda_distill, CODI)
    python bench/reasoning_arms.py e28-stage1-distill-only  # the same without the words loss
    python bench/reasoning_arms.py e28-stage1-distill10  # distill-only, loss.lambda_distill=10
    python bench/reasoning_arms.py e28-stage1-distill-teacher  # distill-only, the teacher trained too (CODI)
    python bench/reasoning_arms.py e28-stage1-soft  # words c = 2 full, the fed state the expected token embedding
                                               # under its LM head (latent.feed: soft)
    python bench/reasoning_arms.py e28-stage1-soft-only  # the same without the words loss
    python bench/reasoning_arms.py e28-stage1-soft-content  # e28-stage1-soft, the words loss on content words only
                                               # (loss.words_content: not in the question, not common in the batch)
    python bench/reasoning_arms.py e28-stage1-soft-content-cont  # two more epochs of it
    python bench/reasoning_arms.py e28-stage1-soft-content-cont2  # two more epochs again (5 in all)
    python bench/reasoning_arms.py e28-stage1-soft-content-teacher  # one epoch from -cont, the K = 0 written
                                               # chain trained alongside (loss.distill_teacher, CODI)
    python bench/reasoning_arms.py e28-stage1-soft-content-teacher-fresh  # the same from the stage 0, one epoch
    python bench/reasoning_arms.py e28-stage1-soft-content-lr1e4  # soft-content at lr 1e-4 (does the lookup survive?)
    python bench/reasoning_arms.py e28-stage1-soft-content-t05  # soft-content at latent.soft_temperature 0.5
    python bench/reasoning_arms.py e28-latent-distill  # the whole curriculum with it (score at K = 8)
    python bench/reasoning_arms.py e18-chain   # E13's stage 0 with chain v2: sentence 1 reads the compared
                                               # attribute of every lesion in numbers, sentence 2 compares them
    python bench/reasoning_arms.py e18-numbers # the same, and the replayed captions give every lesion's
                                               # position and area in the same numbers

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
    "e16-hop1",
    "e16-hop1-nomerge",
    "e18-chain",
    "e18-numbers",
    "e19-hop1-hosts",
    "e20-chain",
    "e20-answer",
    "e20-gates",
    "e21-chain",
    "e21-latent",
    "e22-data",
    "e22-chain",
    "e22-answer",
    "e23-chain",
    "e23-answer",
    "e23-latent",
    "e23-latent-sem",
    "e24-latent",
    "e25-latent-rms",
    "e26-chain",
    "e26-answer",
    "e26-latent",
    "e26-plain-chain",
    "e27-chain",
    "e27-latent",
    "e27-latent-sem",
    "e28-chain",
    "e28-latent",
    "e28-stage1",
    "e28-stage1-r64",
    "e28-stage1-full",
    "e28-latent-full",
    "e28-stage1-sem10",
    "e28-stage1-rms",
    "e28-stage1-cont",
    "e28-stage1-warm",
    "e28-stage1-c4",
    "e28-stage1-words",
    "e28-stage1-words-full",
    "e28-stage1-words-c2",
    "e28-stage1-words-c2-full",
    "e28-stage1-words-c2-cont",
    "e28-stage1-distill",
    "e28-stage1-distill-only",
    "e28-stage1-distill10",
    "e28-stage1-distill-teacher",
    "e28-stage1-soft",
    "e28-stage1-soft-only",
    "e28-stage1-soft-content",
    "e28-stage1-soft-content-cont",
    "e28-stage1-soft-content-t05",
    "e28-stage1-soft-content-cont2",
    "e28-stage1-soft-content-teacher",
    "e28-stage1-soft-content-teacher-fresh",
    "e28-stage1-soft-content-lr1e4",
    "e28-latent-distill",
)
WORK13 = Path("data/e13/work")
WORK22 = Path("data/e22/work")


def _base(args: argparse.Namespace) -> tuple[Path, Path]:
    """Phantom data (12,000, seed 0), the held-out set and its gates, the tiny MedSigLIP: the bundle's own."""
    manifest = WORK / "phantom" / "manifest.jsonl"
    if not manifest.is_file():  # the arms are pinned to E5's data, whatever format later versions write
        from training.phantom import generate

        # E5's data was phantom format 3 (the lesion-hop multi-hop family). Today's generator writes that
        # family as --task lesion-hop, which is the nearest it comes, though not byte-identical. Log §14
        # regenerated E5's data in format 5 instead, and its E28 chain wrote 44.5 % where §12's wrote 71.8 %.
        logging.getLogger("vital.bench").warning(
            "%s is missing: generating it with --task lesion-hop (E5's was phantom format 3); arms built on "
            "it may differ from the log",
            manifest,
        )
        manifest = generate(
            WORK / "phantom", n=args.n, seed=args.seed, size=128, workers=args.workers, task="lesion-hop"
        )
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


def _extreme(objs: list[dict], sup: str) -> dict | None:
    """The object a superlative picks from scenes.jsonl facts, or None when compose.resolve's margin is not met
    (area x MIN_AREA_RATIO over the runner-up; centroid MIN_POSITION_GAP ahead of it)."""
    from training.phantom.compose import MIN_AREA_RATIO, MIN_POSITION_GAP

    if sup in ("largest", "smallest"):
        order = sorted(objs, key=lambda o: o["area"], reverse=sup == "largest")
        a, b = order[0]["area"], order[1]["area"]
        return order[0] if max(a, b) >= MIN_AREA_RATIO * min(a, b) else None
    axis = "cx" if sup == "leftmost" else "cy"
    order = sorted(objs, key=lambda o: o[axis])
    return order[0] if order[1][axis] - order[0][axis] >= MIN_POSITION_GAP else None


def _hop1_manifest(hosts: bool = False) -> Path:
    """Hop 1 of the compositional task asked alone, on every image: "Which is the largest lesion in this CT
    scan?" -> "The cyst." (question type `identify`: closed, exact match), one row per superlative whose
    margin holds (compose.resolve's rule, MIN_AREA_RATIO / MIN_POSITION_GAP, on the painted masks' facts in
    scenes.jsonl). Three lesions per scene, so chance is 1/3 once the model names a present lesion. With
    `hosts`, the same over the three host structures ("Which is the leftmost organ in this CT scan?", the
    atlas' host word)."""
    from training.phantom.atlas import ATLAS
    from training.phantom.compose import SUPERLATIVES
    from training.phantom.modalities import MODALITIES

    src = WORK13 / "phantom"
    out = src / ("hop1-hosts.jsonl" if hosts else "hop1.jsonl")  # beside the images (relative paths)
    if out.is_file():
        return out
    phrase = {m.name: m.phrases[0] for m in MODALITIES}
    facts = {}
    for line in (src / "scenes.jsonl").read_text().splitlines():
        r = json.loads(line)
        facts[r["id"]] = [o for o in r["objects"] if (o["type"] == "lesion") != hosts]
    rows = []
    for line in (src / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        lesions = facts[r["id"]]
        word = ATLAS[r["id"].split("-")[0]].host_word if hosts else "lesion"
        if len(lesions) < 2:
            continue
        for sup in SUPERLATIVES:
            top = _extreme(lesions, sup)
            if top is None:
                continue
            name = top["name"]
            rows.append(
                {
                    **r,
                    "id": f"{r['id']}-h1{sup}",
                    "question": f"Which is the {sup} {word} in this {phrase[r['modality']]}?",
                    "answer": f"The {name}.",
                    "reasoning": [f"The {sup} {word} is the {name}."],
                    "question_type": "identify",
                    "target": name,
                    "target_type": top["type"],
                }
            )
            rows[-1].pop("step_masks", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _val_subset(manifest: Path, out: Path, per_group: int | None, n: int | None = None) -> Path:
    """The val rows the log scores, drawn with random.Random(0): `per_group` per superlative (hop-1 sets,
    `hop1-val800.jsonl`, `hop1-hosts-val800.jsonl`) or the first `n` after a shuffle (organ-hop, `e20-val.jsonl`)."""
    import random

    rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    val = [r for r in rows if r["split"] == "val" and (per_group or "-hh" in r["id"])]
    random.Random(0).shuffle(val)
    if per_group:
        groups: dict[str, list] = {}
        for r in val:
            groups.setdefault(r["question"].split()[3], []).append(r)
        val = [r for k in sorted(groups) for r in groups[k][:per_group]]
    else:
        val = val[:n]
    out.write_text("".join(json.dumps(r) + "\n" for r in val))
    return out


def _lesion_numbers(facts: list[dict], size: int = 128) -> dict[str, dict[str, str]]:
    """Per lesion name, its centroid column and row in percent of the side and its area in percent of the
    image, as chain v2 and the numbered captions write them ("23 %", "0.6 %")."""
    return {
        o["name"]: {
            "x": f"{round(100 * o['cx'])} %",
            "y": f"{round(100 * o['cy'])} %",
            "area": f"{100 * o['area'] / size**2:.1f} %",
        }
        for o in facts
        if o["type"] == "lesion"
    }


_READS = {
    "leftmost": ("Lesion positions from the left", "x"),
    "uppermost": ("Lesion positions from the top", "y"),
    "largest": ("Lesion areas", "area"),
    "smallest": ("Lesion areas", "area"),
}


def _chain_v2(mixed: Path, numbered_captions: bool = False) -> Path:
    """A stage-0 mix whose compositional chains read, then compare (chain v2): sentence 1 gives the attribute
    hop 1 compares for every present lesion in atlas order ("Lesion positions from the left: cyst 23 %,
    abscess 41 %, hemangioma 67 %."), sentence 2 is hop 1's result ("The leftmost lesion is the cyst."), 3-4
    are hop 2 and the answer as before. Task margins (x1.3 area, 6 points of position) keep the written numbers
    apart (a difference over 0.1 never rounds to a tie). With `numbered_captions` every present lesion of a
    replayed caption also says "x 23 %, y 67 %, area 0.6 %"."""
    from training.phantom.atlas import ATLAS
    from training.phantom.compose import _QUESTION_RE

    src = mixed.parent
    facts = {}
    for line in (src / "scenes.jsonl").read_text().splitlines():
        r = json.loads(line)
        facts[r["id"]] = r["objects"]
    out = mixed.with_name(mixed.stem + ("-v2n.jsonl" if numbered_captions else "-v2.jsonl"))
    rows = []
    for line in mixed.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        base = r["id"].removesuffix("-cap")
        atlas = ATLAS[base.split("-")[0]]
        nums = _lesion_numbers(facts[base])
        m = _QUESTION_RE.match(r["question"])
        if m and r["question_type"] == "reasoning":
            head, key = _READS[m.group(2)]
            read = ", ".join(f"{n} {nums[n][key]}" for n in atlas.lesions if n in nums)
            r["reasoning"] = [f"{head}: {read}.", r["reasoning"][0], *r["reasoning"][2:]]
        elif numbered_captions and r["id"].endswith("-cap"):
            structures, lesions = r["reasoning"]
            items = []
            for it in lesions.removeprefix("Lesions: ").removesuffix(".").split("; "):
                name = next(n for n in atlas.lesions if it.startswith(n))
                if name in nums:
                    v = nums[name]
                    it += f", x {v['x']}, y {v['y']}, area {v['area']}"
                items.append(it)
            r["reasoning"] = [structures, "Lesions: " + "; ".join(items) + "."]
            if r["answer"] != "Described above.":
                r["answer"] = " ".join(r["reasoning"])
        rows.append(json.dumps(r))
    out.write_text("\n".join(rows) + "\n")
    return out


def _host_hop_manifest(target: str, lookup: bool = False) -> Path:
    """E20's stage-0 mix: E13's questions with the compositional ones swapped for host-hop questions on the
    hosted scenes (each lesion inside its own organ): "Reason step by step: which lesion in this CT scan lies
    in the leftmost organ?" -> "The cyst.", chain "The leftmost organ is the liver." / "The liver lies in the
    left part of the image." / "The lesion inside it is the cyst." / "So the lesion in the leftmost organ is
    the cyst." Hop 1 compares the organs (E19: the perception reads them), hop 2 reads which lesion the
    chosen organ holds. One question per train image (the superlatives in turn, margins as compose.resolve),
    every superlative whose margin holds on val and test images. Plus the train captions, replayed as in
    `_replay_manifest` (as the chain for `target="chain"`, as the answer otherwise). With `lookup` (E21) the
    chain reads hop 2 in the direction the captions taught (lesion -> organ) and looks the answer up in what
    it wrote: "The leftmost organ is the liver." / "The cyst lies in the spleen, the abscess in the liver,
    the tumor in the kidney." / "The lesion inside the liver is the abscess." / "So the lesion in the
    leftmost organ is the abscess." """
    from training.phantom.atlas import ATLAS
    from training.phantom.compose import SUPERLATIVES, is_compositional
    from training.phantom.facts import region_phrase, third
    from training.phantom.modalities import MODALITIES

    src = WORK13 / "phantom"
    out = src / f"mixed-e20-{target}{'-lookup' if lookup else ''}.jsonl"
    phrase = {m.name: m.phrases[0] for m in MODALITIES}
    facts = {}
    for line in (src / "scenes.jsonl").read_text().splitlines():
        r = json.loads(line)
        facts[r["id"]] = r["objects"]
    rows, n_train = [], 0
    for line in (src / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        if not is_compositional(r["question"]):
            rows.append(line)
        objs = facts[r["id"]]
        lesions = [o for o in objs if o["type"] == "lesion"]
        if not all(o["host"] for o in lesions):
            continue  # a free scene: no lesion lies inside an organ
        hosts = [o for o in objs if o["type"] != "lesion"]
        atlas = ATLAS[r["id"].split("-")[0]]
        asked = [(sup, top) for sup in SUPERLATIVES if (top := _extreme(hosts, sup)) is not None]
        if r["split"] == "train" and asked:
            asked = [asked[n_train % len(asked)]]
            n_train += 1
        for sup, host in asked:
            les = next(o for o in lesions if o["host"] == host["name"])
            word = atlas.host_word
            holds = {o["name"]: o["host"] for o in lesions}
            first, *rest = [n for n in atlas.lesions if n in holds]
            reads = f"The {first} lies in the {holds[first]}, " + ", ".join(
                f"the {n} in the {holds[n]}" for n in rest
            )
            reads = reads.rstrip(", ") + "."
            place = region_phrase(
                third(host["cy"], ("upper", "middle", "lower")),
                third(host["cx"], ("left", "center", "right")),
            )
            rows.append(
                json.dumps(
                    {
                        **{k: v for k, v in r.items() if k != "step_masks"},
                        "id": f"{r['id']}-hh{sup}",
                        "question": f"Reason step by step: which lesion in this {phrase[r['modality']]} lies "
                        f"in the {sup} {word}?",
                        "answer": f"The {les['name']}.",
                        "reasoning": [
                            f"The {sup} {word} is the {host['name']}.",
                            reads if lookup else f"The {host['name']} lies in the {place} part of the image.",
                            f"The lesion inside {'the ' + host['name'] if lookup else 'it'} is the {les['name']}.",
                            f"So the lesion in the {sup} {word} is the {les['name']}.",
                        ],
                        "question_type": "reasoning",
                        "target": les["name"],
                        "target_type": "lesion",
                    }
                )
            )
    for line in (src / "captions.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "train":
            rows.append(json.dumps({**r, "answer": "Described above."} if target == "chain" else r))
    out.write_text("\n".join(rows) + "\n")
    return out


def _host_hop_gates() -> None:
    """The gates of `training.phantom.audit` on E20's questions: question-only lookup and the best one-structure
    read, fitted on their train rows and scored on their val rows (each row joined with its scene's facts, the
    template keyed as superlative-host-name)."""
    from training.phantom.audit import _mean, one_structure, question_only

    src = WORK13 / "phantom"
    facts = {}
    for line in (src / "scenes.jsonl").read_text().splitlines():
        r = json.loads(line)
        facts[r["id"]] = r
    rows = []
    for line in _host_hop_manifest("chain").read_text().splitlines():
        r = json.loads(line)
        if "-hh" in r["id"]:
            base, sup = r["id"].split("-hh")
            rows.append({**r, "facts": {**facts[base], "template": f"{sup}-host-name"}})
    fit = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    hits, chosen = one_structure(fit, val)
    print(f"organ-hop questions: fit {len(fit)}, val {len(val)}")
    print(f"question-only lookup: {100 * _mean(question_only(fit, val)):.1f} %")
    print(f"question + one structure: {100 * _mean(hits):.1f} %")
    for template, c in chosen.items():
        print(f"  {template}: {100 * c['accuracy']:.1f} % (n = {c['n']})")


def _extra_mix(mixed: Path, extra: Path, target: str, captions: bool = True) -> Path:
    """E23's mix: an E22 stage-0 mix plus every row of a multi-hop-only set generated beside it (`vital phantom
    --out data/e22/work/extra --n 6000 --seed 2 --multihop-only --splits 1 0 0`) and its captions (replayed as
    in `_replay_manifest`; not with `captions=False`), with ids prefixed "s2-" and absolute paths so they sit in
    one manifest."""
    if not (extra / "captions.jsonl").is_file():
        raise SystemExit(f"{extra}: generate it first (see _extra_mix)")
    base = extra.absolute()
    rows = mixed.read_text().splitlines()
    for name in ("manifest.jsonl", "captions.jsonl") if captions else ("manifest.jsonl",):
        for line in (extra / name).read_text().splitlines():
            r = json.loads(line)
            r = {**r, "id": f"s2-{r['id']}", "image": str(base / r["image"]), "split": "train"}
            r["mask"] = str(base / r["mask"]) if r.get("mask") else r.get("mask")
            if r.get("step_masks"):
                r["step_masks"] = [str(base / p) for p in r["step_masks"]]
            if r.get("roi_key"):
                r["roi_key"] = r["id"]
            if name == "captions.jsonl" and target == "chain":
                r["answer"] = "Described above."
            rows.append(json.dumps(r))
    out = mixed.with_name(f"mixed-e23-{target}.jsonl" if captions else "questions-e24.jsonl")
    out.write_text("\n".join(x for x in rows if x.strip()) + "\n")
    return out


def _holds_mix(mixed: Path, target: str) -> Path:
    """E26's mix: E23's mix (`_extra_mix`) with every replayed caption written again with `holds=True`
    (training.phantom.captions: a host structure also names the lesion inside it, "liver with the abscess,
    …"), so the captions teach the organ → lesion read that the lookup chain writes out (E20: not learned from
    the lesion → organ direction alone). Same rows, ids and order; only the caption text changes."""
    from training.phantom.captions import write_captions

    new: dict[str, dict] = {}
    for root, prefix in ((WORK22 / "phantom", ""), (WORK22 / "extra", "s2-")):
        path = root / "captions-holds.jsonl"
        if not path.is_file():
            write_captions(root, holds=True, name=path.name)
        for line in path.read_text().splitlines():
            r = json.loads(line)
            new[prefix + r["id"]] = r
    rows, changed = [], 0
    for line in mixed.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["id"].endswith("-cap"):
            h = new[r["id"]]
            changed += h["reasoning"] != r["reasoning"]
            r = {**r, "reasoning": h["reasoning"]}
            if target == "answer":
                r["answer"] = h["answer"]
        rows.append(json.dumps(r))
    if not changed:
        raise SystemExit(f"{mixed}: no caption changed (holds captions not applied)")
    logging.getLogger("vital.bench").info("E26 mix: %d rows, %d captions rewritten", len(rows), changed)
    out = mixed.with_name(f"mixed-e26-{target}.jsonl")
    out.write_text("\n".join(rows) + "\n")
    return out


def _rewrite_organ_chains(src: Path, name: str, steps_for) -> Path:
    """Every organ-hop row of a manifest with its chain rewritten by `steps_for(steps, organ, lesion, word)`
    (word: the modality's host word) and its step masks made organ, lesion, lesion, lesion; other rows, ids
    and order unchanged; written beside `src` as `name`."""
    from training.phantom.atlas import ATLAS
    from training.phantom.modalities import MODALITIES

    words = {m.name: ATLAS[m.key].host_word for m in MODALITIES}
    rows, changed = [], 0
    for line in src.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        steps = r.get("reasoning") or []
        if len(steps) == 4 and steps[2].startswith("The lesion inside the "):
            organ, lesion = steps[2].removeprefix("The lesion inside the ").rstrip(".").split(" is the ")
            r = {**r, "reasoning": steps_for(steps, organ, lesion, words[r["modality"]])}
            if r.get("step_masks"):
                r["step_masks"] = [r["step_masks"][0], *r["step_masks"][2:3] * 3]
            changed += 1
        rows.append(json.dumps(r))
    if not changed:
        raise SystemExit(f"{src}: no organ-hop chain found")
    out = src.with_name(name)
    out.write_text("\n".join(rows) + "\n")
    return out


def _chain_v4(src: Path, name: str) -> Path:
    """E27's chain (v4): sentence 2, the three lesion → organ reads, becomes the one organ → lesion read in
    the words of `holds=True` captions ("The liver is the organ with the abscess."), so each sentence states
    one fact a single fed-back state can hold; step 2's mask becomes the lesion's."""
    return _rewrite_organ_chains(
        src,
        name,
        lambda st, organ, lesion, word: [st[0], f"The {organ} is the {word} with the {lesion}.", *st[2:]],
    )


def _chain_v5(src: Path, name: str) -> Path:
    """E28's chain (v5): the v4 facts, but no later sentence names what an earlier one resolved, so the written
    rest cannot re-derive a latent sentence's result in one pass (E27's sentence 2 began with the organ, which
    hop 1 reads in one pass, so stage 1 never needed its latent): "The leftmost organ is the liver." / "It is
    the organ with the abscess." / "The abscess lies in it." / "So the lesion in the leftmost organ is the
    abscess." """
    return _rewrite_organ_chains(
        src,
        name,
        lambda st, organ, lesion, word: [
            st[0],
            f"It is the {word} with the {lesion}.",
            f"The {lesion} lies in it.",
            st[3],
        ],
    )


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
    elif a.arm.startswith("e16-hop1"):
        init = Path("data/e14/e15/bundle") if a.arm.endswith("nomerge") else WORK13 / "perception" / "bundle"
        extra = (
            ["model.overrides.backbone.arch.vision_config.spatial_merge_size=1"] if "nomerge" in a.arm else []
        )
        hop1 = _hop1_manifest()
        _val_subset(hop1, hop1.with_name("hop1-val800.jsonl"), per_group=200)
        _stage0(hop1, init, Path(f"data/e16/{a.arm}"), args, "answer", epochs=2, extra=extra)
    elif a.arm == "e19-hop1-hosts":
        init = WORK13 / "perception" / "bundle"
        hop1 = _hop1_manifest(hosts=True)
        _val_subset(hop1, hop1.with_name("hop1-hosts-val800.jsonl"), per_group=200)
        _stage0(hop1, init, Path("data/e19/hop1-hosts"), args, "answer", epochs=2)
    elif a.arm == "e20-gates":
        _host_hop_gates()
    elif a.arm.startswith("e20"):
        target = a.arm.split("-")[1]
        room = ["data.max_answer_tokens=128"]
        init = WORK13 / "perception" / "bundle"
        mixed = _host_hop_manifest(target)
        _val_subset(mixed, mixed.with_name("e20-val.jsonl"), per_group=None, n=600)
        _stage0(mixed, init, Path(f"data/e20/stage0-{target}"), args, target, 2, room)
    elif a.arm == "e21-chain":
        room = ["data.max_answer_tokens=128"]
        init = WORK13 / "perception" / "bundle"
        mixed = _host_hop_manifest("chain", lookup=True)
        _stage0(mixed, init, Path("data/e21/stage0-chain"), args, "chain", 2, room)
    elif a.arm == "e21-latent":
        mixed = _host_hop_manifest("chain", lookup=True)
        questions = mixed.with_name("e21-questions.jsonl")
        keep = [
            x
            for x in mixed.read_text().splitlines()
            if x.strip() and not json.loads(x)["id"].endswith("-cap")
        ]
        questions.write_text("\n".join(keep) + "\n")
        sets = ["loss.visual=false"]
        _latent(questions, Path("data/e21/stage0-chain/bundle"), Path("data/e21/latent"), args, sets=sets)
    elif a.arm.startswith("e22"):
        m22 = tb._phantom(WORK22 / "phantom", args)  # the generator's format (5: organ-hop questions)
        if a.arm == "e22-data":
            from training.phantom.compose import is_compositional

            _, gates = tb._heldout(WORK22, m22, args)
            print(json.dumps(gates, indent=2))
            tb._roi_store(m22, WORK22 / "roi", args.seed, enc)  # the latent arms' per-hop targets, built once
            val = [x for x in m22.read_text().splitlines() if x.strip()]
            keep = [  # format 5's only compositional questions are organ-hop ones
                x
                for x in val
                if json.loads(x)["split"] == "val" and is_compositional(json.loads(x)["question"])
            ]
            m22.with_name("e22-val-multihop.jsonl").write_text("\n".join(keep) + "\n")
        elif a.arm in ("e22-chain", "e22-answer"):
            target = a.arm.split("-")[1]
            room = ["data.max_answer_tokens=128"]
            init = WORK13 / "perception" / "bundle"
            _stage0(_replay_manifest(m22, target), init, WORK22 / f"stage0-{target}", args, target, 2, room)
    elif a.arm == "e24-latent":
        m22 = tb._phantom(WORK22 / "phantom", args)
        questions = _extra_mix(m22, WORK22 / "extra", "chain", captions=False)
        roi = tb._roi_store(questions, WORK22 / "roi-e24", args.seed, enc)
        init = WORK22 / "stage0-chain-e23" / "bundle"
        tb._train("configs/tiny.yaml", WORK22 / "latent-e24", questions, roi, args, init=init)
    elif a.arm.startswith(("e23-latent", "e25")):
        m22 = tb._phantom(WORK22 / "phantom", args)
        roi = tb._roi_store(m22, WORK22 / "roi", args.seed, enc)  # built by e22-data
        sets = {
            "e23-latent-sem": ["loss.visual=false"],
            "e25-latent-rms": ["model.overrides.latent.feed=embed_rms"],
        }
        sets = sets.get(a.arm, [])
        init = WORK22 / "stage0-chain-e23" / "bundle"
        tb._train("configs/tiny.yaml", WORK22 / a.arm[4:], m22, roi, args, init=init, sets=sets)
    elif a.arm in ("e27-chain", "e28-chain"):  # E26's chain recipe, the organ-hop chains in v4 / v5
        e = a.arm[:3]
        m22 = tb._phantom(WORK22 / "phantom", args)
        mixed = _holds_mix(_extra_mix(_replay_manifest(m22, "chain"), WORK22 / "extra", "chain"), "chain")
        mixed = (_chain_v4 if e == "e27" else _chain_v5)(mixed, f"mixed-{e}-chain.jsonl")
        init = WORK22 / "stage0-chain-e23" / "bundle"
        room = ["data.max_answer_tokens=128"]
        _stage0(mixed, init, WORK22 / f"stage0-chain-{e}", args, "chain", 1, room)
    elif a.arm.startswith(("e28-latent", "e28-stage1")):
        m22 = tb._phantom(WORK22 / "phantom", args)
        questions = _chain_v5(m22, "manifest-v5.jsonl")
        v4 = _chain_v4(m22, "manifest-v4.jsonl")  # the same step masks as v5
        roi = tb._roi_store(v4, WORK22 / "roi-e27", args.seed, enc)
        init = WORK22 / "stage0-chain-e28" / "bundle"
        # stage 1 alone (sentence 1 latent, the rest written): does one fed state carry hop 1's organ?
        # the soft feed, h_1 saying only its sentence's content words (loss.words_content), whole backbone
        soft_content = [
            "loss.lambda_words=1.0",
            "loss.words_content=true",
            "thoughts_per_sentence=2",
            "train_backbone=true",
            "model.overrides.latent.feed=soft",
        ]
        teacher = ["loss.lambda_distill=1.0", "loss.distill_teacher=true"]
        sets = {
            "e28-stage1": ["curriculum.epochs=[1]"],
            "e28-stage1-r64": [
                "curriculum.epochs=[1]",
                "model.overrides.lora.r=64",
                "model.overrides.lora.alpha=128",
            ],
            "e28-stage1-full": ["curriculum.epochs=[1]", "train_backbone=true"],
            "e28-latent-full": ["train_backbone=true"],
            "e28-stage1-sem10": ["curriculum.epochs=[1]", "train_backbone=true", "loss.lambda_sem=10.0"],
            "e28-stage1-rms": ["curriculum.epochs=[1]", "model.overrides.latent.feed=embed_rms"],
            "e28-stage1-cont": ["curriculum.epochs=[2]", "train_backbone=true"],
            # the heads learn to read the latents first (100 steps), then 351 joint steps: c = 1 and c = 4
            "e28-stage1-warm": ["curriculum.epochs=[1.5]", "optim.heads_warmup_steps=100"],
            "e28-stage1-c4": [
                "curriculum.epochs=[1.5]",
                "optim.heads_warmup_steps=100",
                "thoughts_per_sentence=4",
            ],
            # the fed state must "say" sentence 1's words through the backbone's own LM head
            "e28-stage1-words": ["curriculum.epochs=[1]", "loss.lambda_words=1.0"],
            "e28-stage1-words-c2": [  # two states: h_1 says the words, h_2 starts the written rest
                "curriculum.epochs=[1]",
                "loss.lambda_words=1.0",
                "thoughts_per_sentence=2",
            ],
            "e28-stage1-words-c2-full": [
                "curriculum.epochs=[1]",
                "loss.lambda_words=1.0",
                "thoughts_per_sentence=2",
                "train_backbone=true",
            ],
            "e28-stage1-words-c2-cont": [
                "curriculum.epochs=[2]",
                "loss.lambda_words=1.0",
                "thoughts_per_sentence=2",
                "train_backbone=true",
            ],
            "e28-stage1-words-full": [
                "curriculum.epochs=[1]",
                "loss.lambda_words=1.0",
                "train_backbone=true",
            ],
            # the read side (CODI): the rest's states must match the K = 0 written chain's at the same tokens
            "e28-stage1-distill": [
                "curriculum.epochs=[1]",
                "loss.lambda_words=1.0",
                "loss.lambda_distill=1.0",
                "thoughts_per_sentence=2",
                "train_backbone=true",
            ],
            "e28-stage1-distill-only": [  # the same without the words loss: does distillation write too?
                "curriculum.epochs=[1]",
                "loss.lambda_distill=1.0",
                "thoughts_per_sentence=2",
                "train_backbone=true",
            ],
            "e28-stage1-distill10": [  # distill-only with the distillation weighted 10x
                "curriculum.epochs=[1]",
                "loss.lambda_distill=10.0",
                "thoughts_per_sentence=2",
                "train_backbone=true",
            ],
            "e28-stage1-distill-teacher": [  # distill-only, the teacher trained on its chain too (CODI)
                "curriculum.epochs=[1]",
                "loss.lambda_distill=1.0",
                "loss.distill_teacher=true",
                "thoughts_per_sentence=2",
                "train_backbone=true",
            ],
            # the fed state as the expected token embedding under its LM head (latent.feed: soft): the rest
            # reads the latent "words" in the input space it already reads written chains in
            "e28-stage1-soft": [
                "curriculum.epochs=[1]",
                "loss.lambda_words=1.0",
                "thoughts_per_sentence=2",
                "train_backbone=true",
                "model.overrides.latent.feed=soft",
            ],
            "e28-stage1-soft-content": ["curriculum.epochs=[1]", *soft_content],
            "e28-stage1-soft-content-cont": [
                "curriculum.epochs=[2]",
                *soft_content,
            ],  # from its bundle (below)
            "e28-stage1-soft-content-cont2": ["curriculum.epochs=[2]", *soft_content],  # from -cont: 5 in all
            # one more epoch from -cont with the written chain trained alongside (the K = 0 teacher pass of CODI,
            # loss.distill_teacher): does the rest's organ -> lesion lookup come back? -fresh: from the stage 0
            "e28-stage1-soft-content-teacher": ["curriculum.epochs=[1]", *soft_content, *teacher],
            "e28-stage1-soft-content-teacher-fresh": ["curriculum.epochs=[1]", *soft_content, *teacher],
            # does a lower learning rate keep the stage 0's organ -> lesion lookup (bench/lookup_forms.py)?
            "e28-stage1-soft-content-lr1e4": ["curriculum.epochs=[1]", *soft_content, "optim.lr=1.0e-4"],
            "e28-stage1-soft-content-t05": [  # the softmax at temperature 0.5 (sharper words)
                "curriculum.epochs=[1]",
                *soft_content,
                "model.overrides.latent.soft_temperature=0.5",
            ],
            "e28-stage1-soft-only": [  # the same without the words loss
                "curriculum.epochs=[1]",
                "thoughts_per_sentence=2",
                "train_backbone=true",
                "model.overrides.latent.feed=soft",
            ],
            "e28-latent-distill": [  # the whole curriculum with e28-stage1-distill's recipe (K = 2 per sentence)
                "loss.lambda_words=1.0",
                "loss.lambda_distill=1.0",
                "thoughts_per_sentence=2",
                "train_backbone=true",
                "model.overrides.latent.k_max=8",
                "model.overrides.latent.k_default=8",
            ],
        }.get(a.arm, [])
        if a.arm == "e28-stage1-cont":  # two more epochs of stage 1 from e28-stage1-full, its heads kept
            init = WORK22 / "latent-e28-stage1-full" / "bundle"
        if a.arm == "e28-stage1-soft-content-cont":  # two more epochs from e28-stage1-soft-content
            init = WORK22 / "latent-e28-stage1-soft-content" / "bundle"
        if a.arm in ("e28-stage1-soft-content-cont2", "e28-stage1-soft-content-teacher"):
            init = WORK22 / "latent-e28-stage1-soft-content-cont" / "bundle"
        if a.arm == "e28-stage1-words-c2-cont":  # two more epochs from e28-stage1-words-c2-full
            init = WORK22 / "latent-e28-stage1-words-c2-full" / "bundle"
        out = WORK22 / ("latent-e28" if a.arm == "e28-latent" else f"latent-{a.arm}")
        tb._train("configs/tiny.yaml", out, questions, roi, args, init=init, sets=sets)
    elif a.arm.startswith("e27-latent"):
        m22 = tb._phantom(WORK22 / "phantom", args)
        questions = _chain_v4(m22, "manifest-v4.jsonl")
        _chain_v4(m22.with_name("e22-val-multihop.jsonl"), "e27-val-multihop.jsonl")  # grounding's step masks
        roi = tb._roi_store(questions, WORK22 / "roi-e27", args.seed, enc)
        init = WORK22 / "stage0-chain-e27" / "bundle"
        sem = a.arm == "e27-latent-sem"
        sets = ["loss.visual=false"] if sem else []
        out = WORK22 / ("latent-e27-sem" if sem else "latent-e27")
        tb._train("configs/tiny.yaml", out, questions, roi, args, init=init, sets=sets)
    elif a.arm == "e26-latent":
        m22 = tb._phantom(WORK22 / "phantom", args)
        roi = tb._roi_store(m22, WORK22 / "roi", args.seed, enc)  # built by e22-data
        init = WORK22 / "stage0-chain-e26" / "bundle"
        tb._train("configs/tiny.yaml", WORK22 / "latent-e26", m22, roi, args, init=init)
    elif a.arm.startswith("e26"):
        target = a.arm.split("-")[-1]
        m22 = tb._phantom(WORK22 / "phantom", args)
        mixed = _extra_mix(_replay_manifest(m22, target), WORK22 / "extra", target)
        if "plain" not in a.arm:  # e26-plain-chain: the control, E23's mix unchanged (one more epoch)
            mixed = _holds_mix(mixed, target)
        init = WORK22 / f"stage0-{target}-e23" / "bundle"
        room = ["data.max_answer_tokens=128"]
        name = f"stage0-{target}-e26" + ("-plain" if "plain" in a.arm else "")
        _stage0(mixed, init, WORK22 / name, args, target, 1, room)
    elif a.arm.startswith("e23"):
        target = a.arm.split("-")[1]
        m22 = tb._phantom(WORK22 / "phantom", args)
        mixed = _extra_mix(_replay_manifest(m22, target), WORK22 / "extra", target)
        init = WORK22 / f"stage0-{target}" / "bundle"
        room = ["data.max_answer_tokens=128"]
        _stage0(mixed, init, WORK22 / f"stage0-{target}-e23", args, target, 1, room)
    elif a.arm.startswith("e18"):
        mixed = _chain_v2(_replay_manifest(_phantom_v3(), "chain"), numbered_captions=a.arm == "e18-numbers")
        room = ["data.max_answer_tokens=128" if a.arm == "e18-chain" else "data.max_answer_tokens=176"]
        init = WORK13 / "perception" / "bundle"
        _stage0(mixed, init, Path(f"data/e18/{a.arm}"), args, "chain", epochs=2, extra=room)
    elif a.arm == "e8":
        _latent(manifest, WORK / "stage0-chain" / "bundle", Path("data/e8/work/latent"), args)
    elif a.arm == "e9":
        _latent(manifest, Path("data/e7/work/stage0-chain/bundle"), Path("data/e9/work/latent"), args)
    else:
        feed = ["model.overrides.latent.feed=embed_rms"]
        _latent(manifest, WORK / "stage0-chain" / "bundle", Path("data/e10/work/latent"), args, sets=feed)


if __name__ == "__main__":
    main()
