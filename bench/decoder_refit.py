"""Can the auxiliary decoder read a latent at all? Refit it alone on frozen latent states.

    python bench/decoder_refit.py BUNDLE --train MANIFEST --val VAL_MANIFEST [--heads bundle|fresh]
        [--steps 300] [--lr 1e-3] [--n-train 2000]

Runs the bundle's latent loop once at K = 1 on the first N compositional train questions of MANIFEST and on
VAL_MANIFEST (states h_1 fixed from then on), then trains only the scaffolding (pj_in + the auxiliary
decoder: the bundle's own, or fresh ones) to reconstruct sentence 1 from h_1 with AdamW at a constant lr,
batches of 32. Every 100 steps it prints the validation cross-entropy of sentence 1, over all tokens and at
two token positions: 1 (the direction word, "uppermost", which the question states) and 5 (hop 1's
structure, which only the image gives). A decoder that trains jointly with the backbone but cannot bring
position 1 below chance here in a few hundred steps is not reading its prefix.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--val", required=True, type=Path)
    p.add_argument("--heads", choices=("bundle", "fresh"), default="bundle")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from latent_probe import compositional_rows, loop_states  # bench/ is on sys.path when run as a script

    from vital_core.bundle import load_bundle
    from vital_core.heads import build_scaffold, encode_steps

    torch.manual_seed(a.seed)
    train = compositional_rows(a.train, "train", a.n_train)
    val = compositional_rows(a.val, None, None)
    model = load_bundle(a.bundle, scaffold=a.heads == "bundle").eval()
    htr = loop_states(model, train, a.train.parent, 1, 32)[:, 1]
    hva = loop_states(model, val, a.val.parent, 1, 32)[:, 1]
    sc = (
        copy.deepcopy(model.scaffold)
        if a.heads == "bundle"
        else build_scaffold(model.config, model.hidden_size)
    )
    for q in sc.parameters():
        q.requires_grad_(True)

    def sentence1(rows):
        ids, mask, _ = encode_steps([r["reasoning"] for r in rows], model.tokenizer, 1, 48)
        return ids[:, 0], mask[:, 0]

    itr, mtr = sentence1(train)
    iva, mva = sentence1(val)
    opt = torch.optim.AdamW(sc.parameters(), lr=a.lr)
    for step in range(a.steps + 1):
        if step % 100 == 0:
            sc.eval()
            with torch.no_grad():
                t = sc.token_losses(hva, iva, mva)
            print(
                f"step {step}: val CE {float(t.sum() / mva.sum()):.3f}, direction word {float(t[:, 1].mean()):.3f}, "
                f"hop-1 structure {float(t[:, 5].mean()):.3f}",
                flush=True,
            )
            sc.train()
        if step == a.steps:
            break
        i = torch.randint(0, len(train), (32,))
        loss = sc.token_losses(htr[i], itr[i], mtr[i]).sum() / mtr[i].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
