"""How much of the written chain's states is sample-specific, and does a latent run's written rest hold it?

    python bench/distill_spread.py BUNDLE MANIFEST [--k 2] [--latent 1] [--n 96] [--out F]

For the organ-hop questions of MANIFEST's val split (their chains as MANIFEST writes them), the bundle reads
each one twice, as `loss.lambda_distill` does in training: the teacher with every sentence written (K = 0),
the student with its first `--latent` sentences as K latent steps and the rest written. At the tokens both
write (`training.trainer.distill_loss`: aligned from the end, same predicted token, every decoder layer),
it reports three mean relative squared errors ||h - h'||^2 / ||h'||^2:

- own: the student against its own teacher (what training minimises);
- other: the student against the teacher of another sample with the same question text (a different image,
  so a different organ and lesion);
- teachers: two such samples' teachers against each other (how far apart the written chain's states of two
  images are at all).

`teachers` is the part of the states that depends on the image; a student whose `own` error is well below
its `other` error carries it from its fed states, one with `own` = `other` matches only what every sample
shares."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image


def mean_ci(xs: list[float]) -> tuple[float, float, float]:
    """Mean and its normal 95 % interval."""
    from training.eval.stats import Z95

    t = torch.tensor(xs, dtype=torch.float64)
    m, half = float(t.mean()), Z95 * float(t.std()) / len(xs) ** 0.5 if len(xs) > 1 else 0.0
    return m, m - half, m + half


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("manifest", type=Path, help="a manifest whose val rows hold the chains to compare")
    p.add_argument("--k", type=int, default=2, help="latent steps of the student")
    p.add_argument("--latent", type=int, default=1, help="sentences the student runs as latent steps")
    p.add_argument("--n", type=int, default=96, help="val questions (in pairs with the same question)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = p.parse_args()

    from latent_probe import compositional_rows  # bench/ is on sys.path when run as a script

    from training.trainer import LayerStates, distill_loss
    from vital_core.bundle import load_bundle
    from vital_core.chain import target_text
    from vital_core.preprocess import encode_answers

    rows = compositional_rows(a.manifest, "val", None)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["question"]].append(r)
    pairs = [(g[i], g[i + 1]) for g in groups.values() for i in range(0, len(g) - 1, 2)][: a.n // 2]
    if not pairs:
        raise SystemExit(f"{a.manifest}: no two val questions share a text")
    model = load_bundle(a.bundle).eval()
    tok, root = model.tokenizer, a.manifest.parent
    figures: dict[str, list[float]] = {"own": [], "other": [], "teachers": []}

    def states(rs: list[dict], k: int, latent: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        images = [Image.open(root / r["image"]).convert("RGB") for r in rs]
        texts = [target_text(r["reasoning"], r["answer"], latent, "chain") for r in rs]
        ids, mask = encode_answers(texts, tok, 256)
        with torch.inference_mode(), LayerStates(model.core) as rec:
            model(model.encode(images, [r["question"] for r in rs]), k, answer_ids=ids, answer_mask=mask)
        return rec.answer_states(), ids, mask

    def err(h, ids, mask, i, t, tids, tmask, j) -> float:
        per = [
            distill_loss(
                x[i : i + 1], ids[i : i + 1], mask[i : i + 1], y[j : j + 1], tids[j : j + 1], tmask[j : j + 1]
            )
            for x, y in zip(h, t)
        ]
        return float(torch.stack(per).mean())

    for s in range(0, len(pairs), 16):
        part = [r for pair in pairs[s : s + 16] for r in pair]  # rows 2m and 2m+1 share a question
        sh, sid, smask = states(part, a.k, a.latent)
        th, tid, tmask = states(part, 0, 0)
        for i in range(len(part)):
            j = i ^ 1
            figures["own"].append(err(sh, sid, smask, i, th, tid, tmask, i))
            figures["other"].append(err(sh, sid, smask, i, th, tid, tmask, j))
            figures["teachers"].append(err(th, tid, tmask, i, th, tid, tmask, j))
    report = {"bundle": a.bundle, "k": a.k, "latent": a.latent, "n": len(figures["own"])}
    for name, xs in figures.items():
        m, lo, hi = mean_ci(xs)
        report[name] = {"mean": m, "ci95": [lo, hi]}
        print(f"{name:9s} {m:.4f} [{lo:.4f}, {hi:.4f}] (n = {len(xs)})")
    d = [o - w for o, w in zip(figures["other"], figures["own"])]
    m, lo, hi = mean_ci(d)
    report["other_minus_own"] = {"mean": m, "ci95": [lo, hi]}
    print(f"other - own {m:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if a.out:
        a.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
