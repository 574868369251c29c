"""Does a stage-0 model's organ → lesion lookup need hop 1 in its full wording? Teacher-forced, hop 1 always right.

    python bench/lookup_forms.py BUNDLE VAL_MANIFEST_V5 [--n 400]

For each organ-hop question of VAL_MANIFEST_V5 (chain v5: "The leftmost organ is the kidney. It is the organ
with the cyst. ..."), the bundle reads the reference chain at K = 0 with hop 1 written three ways, and we take
its choice of lesion in sentence 2 ("It is the organ with the ⟨lesion⟩"): the lesion, among the modality's
lesion names, whose first token its logits rank first at that position. Forms: `full` (sentence 1 as written),
`short` (the structure's name alone, "The kidney."; the form a soft-fed latent takes), `none` (sentence 1
dropped: what the question and the image alone give). Prints accuracy with 95 % intervals per form (issue 30,
log §15).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from latent_probe import _hop1
from PIL import Image

from training.eval.stats import wilson
from vital_core.chain import target_text
from vital_core.preprocess import encode_answers


def _lesion(row: dict) -> str:
    return row["answer"].removeprefix("The ").rstrip(".").strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("manifest", type=Path, help="chain-v5 manifest; its val-split organ-hop rows are read")
    p.add_argument("--n", type=int, default=400)
    a = p.parse_args()
    from training.phantom.compose import is_compositional
    from vital_core.bundle import load_bundle

    rows = [json.loads(x) for x in a.manifest.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["split"] == "val" and is_compositional(r["question"])][: a.n]
    model = load_bundle(a.bundle).eval()
    tok = model.tokenizer
    names = defaultdict(set)
    for r in rows:
        names[r["modality"]].add(_lesion(r))
    first = lambda s: tok.encode(" " + s, add_special_tokens=False)[0]  # noqa: E731
    forms = {
        "full": lambda r: r["reasoning"],
        "short": lambda r: [f"The {_hop1(r)}.", *r["reasoning"][1:]],
        "none": lambda r: r["reasoning"][1:],
    }
    hits = {f: 0 for f in forms}
    with torch.inference_mode():
        for i in range(0, len(rows), 32):
            part = rows[i : i + 32]
            enc = model.encode(
                [Image.open(a.manifest.parent / r["image"]).convert("RGB") for r in part],
                [r["question"] for r in part],
            )
            for f, reasoning in forms.items():
                texts = [target_text(reasoning(r), r["answer"], 0, "chain") for r in part]
                ids, mask = encode_answers(texts, tok, max_tokens=160)
                logits = model(
                    enc, 0, answer_ids=ids.to(model.device), answer_mask=mask.to(model.device)
                ).logits
                for j, (r, text) in enumerate(zip(part, texts)):
                    cut = text.index(" with the ") + len(" with the")  # sentence 2's lesion follows
                    pos = len(tok.encode(text[:cut], add_special_tokens=False))
                    if int(ids[j, pos]) != first(_lesion(r)):  # the lesion's first token is where we look
                        raise SystemExit(f"{r['id']}: sentence 2's lesion is not at token {pos} of {text!r}")
                    cands = sorted(names[r["modality"]])
                    scores = [float(logits[j, pos, first(c)]) for c in cands]
                    hits[f] += cands[max(range(len(cands)), key=scores.__getitem__)] == _lesion(r)
    for f, h in hits.items():
        lo, hi = wilson(h, len(rows))
        print(
            f"{f:5s}: sentence 2's lesion right {100 * h / len(rows):.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n = {len(rows)})"
        )


if __name__ == "__main__":
    main()
