"""Linear probes on the image-token states of a bundle: does a token say WHAT covers its cell, and WHERE it is?

For each image, the merged visual tokens (grid h x w) at three depths: the vision tower's output (what the LM
receives), after LM layer 1 and after layer 2 (hidden states at the image-token positions). Labels per cell:
the row and column of the cell (position) and, for cells holding an object's centre, the object's name.
Probes: multinomial logistic regression (torch, LBFGS), trained on 70 % of the images, scored on 30 %.

Usage: python bench/token_probe.py BUNDLE PHANTOM_DIR N_IMAGES (issue 30, bench/results/reasoning-experiments.md).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vital_core.bundle import load_bundle

bundle, root, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = load_bundle(bundle)
model.core.eval()
rows = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
facts = {json.loads(x)["id"]: json.loads(x) for x in (root / "scenes.jsonl").read_text().splitlines()}
seen, picked = set(), []
for r in rows:
    if r["split"] == "val" and r["id"] not in seen:
        seen.add(r["id"])
        picked.append(r)
picked = picked[:n]
names = sorted({o["name"] for r in picked for o in facts[r["id"]]["objects"]})
feats = {d: [] for d in ("vision", "lm1", "lm2")}
pos_r, pos_c, name_lab, img_of = [], [], [], []
with torch.no_grad():
    for i, r in enumerate(picked):
        img = Image.open(root / r["image"]).convert("RGB")
        b = model.encode([img], ["Describe."])
        out = model.core(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            pixel_values=b.pixel_values,
            image_grid_thw=b.image_grid_thw,
            mm_token_type_ids=b.mm_token_type_ids,
            output_hidden_states=True,
        )
        sel = b.mm_token_type_ids[0] == 1
        hs = out.hidden_states
        t, gh, gw = b.image_grid_thw[0].tolist()
        h, w = gh // 2, gw // 2
        feats["vision"].append(hs[0][0, sel].float().numpy())
        feats["lm1"].append(hs[1][0, sel].float().numpy())
        feats["lm2"].append(hs[2][0, sel].float().numpy())
        lab = np.full(h * w, -1)
        objs = sorted(facts[r["id"]]["objects"], key=lambda o: o["type"] != "lesion")  # lesions win a cell
        for o in reversed(objs):
            cell = min(int(o["cy"] * h), h - 1) * w + min(int(o["cx"] * w), w - 1)
            lab[cell] = names.index(o["name"])
        name_lab.append(lab)
        pos_r.append(np.repeat(np.arange(h), w))
        pos_c.append(np.tile(np.arange(w), h))
        img_of.append(np.full(h * w, i))
name_lab, pos_r, pos_c, img_of = map(np.concatenate, (name_lab, pos_r, pos_c, img_of))
train = img_of < int(0.7 * len(picked))


def probe(x, y, mask):
    x = torch.tensor(x[mask])
    y = torch.tensor(y[mask])
    tr = torch.tensor(train[mask])
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mu) / sd
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x[tr]), y[tr]) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    acc = (lin(x[~tr]).argmax(1) == y[~tr]).float().mean().item()
    maj = (y[~tr] == torch.mode(y[tr]).values).float().mean().item()
    return round(acc, 3), round(maj, 3)


res = {"bundle": bundle, "images": len(picked), "grid": [h, w], "names": len(names)}
for d in feats:
    x = np.concatenate(feats[d])
    res[d] = {
        "row": probe(x, pos_r, np.ones_like(pos_r, bool)),
        "col": probe(x, pos_c, np.ones_like(pos_c, bool)),
        "name_at_centre": probe(x, name_lab, name_lab >= 0),
    }
print(json.dumps(res))
