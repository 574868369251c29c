"""Can a stage-0 model read "the lesion inside the <organ>" without the written lesion → organ reads?

For each organ-hop question of a manifest, the model is teacher-forced (K = 0) on the question and a chain
prefix built from the *true* facts, and scored on which of the modality's four lesion names it rates most
likely as the next words (4-way choice, chance 25 %):

* `lookup`  : sentence 1, sentence 2 (the lesion → organ reads), "The lesion inside the <organ> is the" —
  the lookup in written facts that E21's chain relies on;
* `inverse` : sentence 1, then straight to "The lesion inside the <organ> is the" — the organ → lesion read
  in one pass, the step a latent chain has to take without the written reads (E20: not learned from
  lesion → organ captions alone);
* `with`    : sentence 1, then "The <organ> with the" — the same read in the words of `holds=True` captions
  ("liver with the abscess"), to tell a read the model lacks from one it has only in the captions' phrasing.
* `caption` : the describe question and the image's `holds=True` caption (DIR/captions-holds.jsonl beside
  the manifest) up to the first "<organ> with the" — the same read where the captions teach it (nothing
  before that point names a lesion).

    python bench/organ_reads.py BUNDLE MANIFEST [--limit N] [--probes P ...] [--out FILE.json]

Prints accuracy with a 95 % Wilson interval per probe; --out saves them as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

PROBES = ("lookup", "inverse", "with", "caption")


def _candidates(row: dict) -> list[str]:
    from training.phantom.atlas import ATLAS
    from training.phantom.modalities import MODALITIES

    key = next(m.key for m in MODALITIES if m.name == row["modality"])
    return list(ATLAS[key].lesions)


def pick(model, image: Image.Image, question: str, prefix: str, names: list[str], tail: str = "") -> str:
    """The name the model rates most likely after `prefix` (teacher-forced at K = 0 on the question and
    image): the largest summed log-probability of each "prefix name{tail}"'s name tokens (and tail)."""
    from vital_core.latent import latent_forward
    from vital_core.preprocess import encode_answers

    tok = model.tokenizer
    texts = [f"{prefix} {n}{tail}" for n in names]
    n_pre = len(tok(prefix, add_special_tokens=False)["input_ids"])
    batch = model.encode([image] * len(texts), [question] * len(texts))
    ids, mask = encode_answers(texts, tok, 256)
    with torch.no_grad():
        out = latent_forward(
            model.core, batch, 0, answer_ids=ids.to(model.device), answer_mask=mask.to(model.device)
        )
    logp = out.logits.float().log_softmax(-1)  # (C, T, V): logits[t] predicts ids[t]
    scores = []
    for c in range(len(texts)):
        end = int(mask[c].sum()) - 1  # without the stop token
        scores.append(float(logp[c, torch.arange(n_pre, end), ids[c, n_pre:end]].sum()))
    return names[max(range(len(names)), key=scores.__getitem__)]


def score(model, rows: list[dict], root: Path, probe: str) -> list[bool]:
    """One bool per row: the true lesion is the most likely of the four names after the probe's prefix."""
    hits = []
    for r in rows:
        s1, s2, s3, _ = r["reasoning"]
        organ = s3.removeprefix("The lesion inside the ").split(" is the ")[0]
        lesion = r["answer"].removeprefix("The ").rstrip(".")
        head = [s1, s2] if probe == "lookup" else [s1]
        ask = f"The {organ} with the" if probe == "with" else f"The lesion inside the {organ} is the"
        image = Image.open(root / r["image"]).convert("RGB")
        hits.append(pick(model, image, r["question"], " ".join([*head, ask]), _candidates(r), ".") == lesion)
    return hits


def score_captions(model, rows: list[dict], root: Path) -> list[bool]:
    """One bool per row with a hosted structure: the lesion its `holds=True` caption names first after
    "<organ> with the" is the most likely of the four names there (teacher-forced on the caption so far)."""
    import re

    caps = {}
    for line in (root / "captions-holds.jsonl").read_text().splitlines():
        c = json.loads(line)
        caps[c["id"].removesuffix("-cap")] = c
    hits = []
    for r in rows:
        c = caps[r["id"]]
        m = re.search(r"with the ([a-z ]+?)(,| and)", c["reasoning"][0])
        if m is None:
            continue
        prefix = c["reasoning"][0][: m.start(1)].rstrip()
        image = Image.open(root / r["image"]).convert("RGB")
        hits.append(pick(model, image, c["question"], prefix, _candidates(r)) == m.group(1))
    return hits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("manifest")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES)
    a = p.parse_args()
    from training.eval.stats import wilson
    from vital_core.bundle import load_bundle

    man = Path(a.manifest)
    rows = [json.loads(x) for x in man.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if len(r.get("reasoning", [])) == 4 and "lesion inside the" in r["reasoning"][2]]
    rows = rows[: a.limit] if a.limit else rows
    model = load_bundle(a.bundle)
    model.eval()
    report = {"bundle": a.bundle, "manifest": a.manifest, "n": len(rows)}
    for probe in a.probes:
        hits = (
            score_captions(model, rows, man.parent)
            if probe == "caption"
            else score(model, rows, man.parent, probe)
        )
        k = sum(hits)
        lo, hi = wilson(k, len(hits))
        report[probe] = {"accuracy": k / len(hits), "ci95": [lo, hi], "hits": k}
        print(f"{probe:8s} {100 * k / len(hits):5.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]  (n = {len(hits)})")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
