"""How much of a sample do the latent states hold? Spread across samples, and what the /explain decoder reads.

    python bench/latent_spread.py BUNDLE MANIFEST [--n 48] [--k 4]

On the first N rows of MANIFEST (a bundle with its scaffolding): per state h_0..h_K, the mean norm, the mean
pairwise cosine between samples (1.0: every image gives the same state) and the between-sample spread
(norm of the per-dimension standard deviation over the mean norm); then per step the auxiliary decoder's
teacher-forced cross-entropy of the step's reference sentence from the sample's own latent and from another
sample's (the batch rolled by one). Equal cross-entropies: the decoder reads nothing sample-specific.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("manifest")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--k", type=int, default=4)
    a = p.parse_args()
    from vital_core.bundle import load_bundle
    from vital_core.heads import encode_steps

    man = Path(a.manifest)
    rows = [json.loads(x) for x in man.read_text().splitlines() if x.strip()][: a.n]
    model = load_bundle(a.bundle, scaffold=True)
    model.eval()
    model.scaffold.eval()
    images = [Image.open(man.parent / r["image"]).convert("RGB") for r in rows]
    with torch.no_grad():
        out = model(model.encode(images, [r["question"] for r in rows]), a.k, max_new_tokens=4)
        lat = out.latents.float()  # (B, K+1, H)
        report: dict = {"bundle": a.bundle, "n": len(rows), "states": [], "steps": []}
        off = ~torch.eye(len(rows), dtype=torch.bool)
        for s in range(a.k + 1):
            h = lat[:, s]
            u = F.normalize(h, dim=-1)
            report["states"].append(
                {
                    "state": f"h{s}",
                    "norm": round(float(h.norm(dim=-1).mean()), 2),
                    "pairwise_cosine": round(float((u @ u.T)[off].mean()), 4),
                    "spread": round(float(h.std(0).norm() / h.norm(dim=-1).mean()), 4),
                }
            )
        ids, mask, has = encode_steps([r["reasoning"] for r in rows], model.tokenizer, a.k, 48)
        roll = torch.roll(torch.arange(len(rows)), 1)
        for s in range(min(a.k, ids.shape[1])):
            sl = slice(s, s + 1)
            own = model.scaffold.semantic_loss(lat[:, 1 + s : 2 + s], ids[:, sl], mask[:, sl], has[:, sl])
            donor = model.scaffold.semantic_loss(
                lat[roll, 1 + s : 2 + s], ids[:, sl], mask[:, sl], has[:, sl]
            )
            report["steps"].append(
                {"step": s + 1, "ce_own": round(float(own), 3), "ce_donor": round(float(donor), 3)}
            )
    for r in report["states"]:
        print(f"{r['state']}: norm {r['norm']}, pairwise cosine {r['pairwise_cosine']}, spread {r['spread']}")
    for r in report["steps"]:
        print(f"step {r['step']}: decoder CE own {r['ce_own']}, donor {r['ce_donor']}")


if __name__ == "__main__":
    main()
