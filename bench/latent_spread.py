"""How much of a sample do the latent states hold? Spread across samples, and what the /explain decoder reads.

    python bench/latent_spread.py BUNDLE MANIFEST [--n 48] [--k 4] [--tokens] [--residual]

On the first N rows of MANIFEST (a bundle with its scaffolding): per state h_0..h_K, the mean norm, the mean
pairwise cosine between samples (1.0: every image gives the same state) and the between-sample spread
(norm of the per-dimension standard deviation over the mean norm); then per step the auxiliary decoder's
teacher-forced cross-entropy of the step's reference sentence from the sample's own latent and from another
sample's (the batch rolled by one). Equal cross-entropies: the decoder reads nothing sample-specific.
With --tokens, sentence 1's cross-entropy per token position (own vs donor latent), positions aligned on
the first row's tokens. With --residual, per language-model layer: the mean norm of the residual stream
entering the layer and of the layer's update (output − input), at the prompt's last token and at latent
step 1's position. A fed state much larger than the updates leaves every layer's contribution a small
perturbation of it.
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
    p.add_argument("--residual", action="store_true", help="per-layer residual and update norms (see above)")
    p.add_argument(
        "--tokens", action="store_true", help="sentence 1's cross-entropy per token position, own vs donor"
    )
    a = p.parse_args()
    from vital_core.bundle import load_bundle
    from vital_core.heads import encode_steps

    man = Path(a.manifest)
    rows = [json.loads(x) for x in man.read_text().splitlines() if x.strip()][: a.n]
    model = load_bundle(a.bundle, scaffold=True)
    model.eval()
    model.scaffold.eval()
    images = [Image.open(man.parent / r["image"]).convert("RGB") for r in rows]
    calls: list[list[tuple[float, float]]] = []  # per layer, per call: norms of (input, update)
    hooks = []
    if a.residual:
        layers = model.core.model.language_model.layers
        calls = [[] for _ in layers]

        def record(i):
            def hook(_mod, args, kwargs, output):
                x = (args[0] if args else kwargs["hidden_states"]).float()[:, -1]
                y = (output[0] if isinstance(output, tuple) else output).float()[:, -1]
                calls[i].append((float(x.norm(dim=-1).mean()), float((y - x).norm(dim=-1).mean())))

            return hook

        hooks = [m.register_forward_hook(record(i), with_kwargs=True) for i, m in enumerate(layers)]
    with torch.no_grad():
        out = model(model.encode(images, [r["question"] for r in rows]), a.k, max_new_tokens=4)
        for h in hooks:
            h.remove()
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
            if a.tokens and s == 0:  # per token position of sentence 1, own vs donor
                h_own, h_donor = lat[has[:, 0], 1], lat[roll][has[:, 0], 1]
                i0, m0 = ids[has[:, 0], 0], mask[has[:, 0], 0]
                t_own = model.scaffold.token_losses(h_own, i0, m0)
                t_donor = model.scaffold.token_losses(h_donor, i0, m0)
                width = int(m0.sum(1).min())
                words = [model.tokenizer.decode([t]) for t in i0[0, :width].tolist()]
                report["step1_tokens"] = [
                    {
                        "token": w,
                        "ce_own": round(float(t_own[:, j].mean()), 3),
                        "ce_donor": round(float(t_donor[:, j].mean()), 3),
                    }
                    for j, w in enumerate(words)
                ]
            report["steps"].append(
                {"step": s + 1, "ce_own": round(float(own), 3), "ce_donor": round(float(donor), 3)}
            )
    for r in report["states"]:
        print(f"{r['state']}: norm {r['norm']}, pairwise cosine {r['pairwise_cosine']}, spread {r['spread']}")
    for r in report["steps"]:
        print(f"step {r['step']}: decoder CE own {r['ce_own']}, donor {r['ce_donor']}")
    for t in report.get("step1_tokens", []):  # positions past the first row's length are not shown
        print(f"sentence 1 token {t['token']!r}: CE own {t['ce_own']}, donor {t['ce_donor']}")
    for i, c in enumerate(calls):  # call 0: the prefill (its last token); call 1: latent step 1
        if len(c) > 1 and a.k > 0:
            print(
                f"layer {i}: prompt's last token residual {c[0][0]:.2f}, update {c[0][1]:.2f}; "
                f"latent step 1 residual {c[1][0]:.2f}, update {c[1][1]:.2f}"
            )


if __name__ == "__main__":
    main()
