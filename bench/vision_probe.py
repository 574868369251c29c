"""Can the backbone see lesion size? A linear probe on a bundle's image tokens (issue 30, hop 1).

Hop 1 of a compositional question ("the largest lesion") needs each lesion's size; caption v3 names the size
rank, yet a 1,800-step perception bundle writes the right size word only at chance. This separates "the image
tokens do not carry size" from "the language model has not learned to read and compare it": for every
lesion of the phantom's scenes (scenes.jsonl facts: area in pixels, centroid) it takes the token under the
lesion's centroid and the mean of its 3 x 3 neighbourhood, from (a) the vision tower's patches before its
2 x 2 merger, (b) its merged output (what the language model receives) and (c) the language model's last
hidden state at those image positions, and fits
a ridge regression to log(area) on train images (ridge strength chosen on a fifth of them held out). Reported
on val images: R², and, over pairs of lesions in one image whose areas differ by at least the task's margin
(compose.MIN_AREA_RATIO), how often the probe orders the pair right (chance 50 %). A centroid-position-only
probe is the baseline (size must not be readable from where a lesion is).

    python bench/vision_probe.py BUNDLE PHANTOM_DIR [--train 3000] [--val 800] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from training.phantom.compose import MIN_AREA_RATIO
from training.phantom.modalities import MODALITIES

LESION = "lesion"


def _lesions(scene: dict) -> list[dict]:
    return [o for o in scene["objects"] if o["type"] == LESION]


@torch.no_grad()
def _features(
    model, image: Image.Image, question: str
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, int]:
    """(vision tower patches before the merger (p*p, C), p, merged vision tokens (g*g, H), LM last hidden at
    image positions (g*g, H), g), each row-major over its grid (g = p / spatial merge size)."""
    vl = model.core.model
    b = model.encode([image], [question])
    image_out = vl.get_image_features(b.pixel_values, b.image_grid_thw, return_dict=True)
    vis = image_out.pooler_output[0]
    m = vl.visual.spatial_merge_size
    _, gh, gw = (int(v) for v in b.image_grid_thw[0])
    # the processor lists patches merge window by merge window: (gh/m, gw/m, m, m) -> row-major (gh, gw)
    patches = image_out.last_hidden_state.reshape(gh // m, gw // m, m, m, -1).permute(0, 2, 1, 3, 4)
    patches = patches.reshape(gh * gw, -1)
    pos, _ = vl.get_rope_index(
        b.input_ids, b.mm_token_type_ids, b.image_grid_thw, attention_mask=b.attention_mask
    )
    out = vl(
        input_ids=b.input_ids,
        attention_mask=b.attention_mask,
        position_ids=pos,
        mm_encoder_outputs={"image": image_out},
    )
    lm = out.last_hidden_state[0][b.mm_token_type_ids[0].bool()]
    g = int(round(vis.shape[0] ** 0.5))
    return patches.float().numpy(), gh, vis.float().numpy(), lm.float().numpy(), g


def _token_feature(tokens: np.ndarray, g: int, cy: float, cx: float) -> np.ndarray:
    grid = tokens.reshape(g, g, -1)
    r, c = min(int(cy * g), g - 1), min(int(cx * g), g - 1)
    hood = grid[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].reshape(-1, grid.shape[-1]).mean(0)
    return np.concatenate([grid[r, c], hood])


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return mu / sd, w / sd, float(y.mean() - (mu / sd) @ w)


def _fit(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """Ridge with its strength chosen on a held-out fifth of the train rows; refit on all of them."""
    idx = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) // 5
    best = None
    for lam in (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0):
        _, w, b = _ridge(x[idx[cut:]], y[idx[cut:]], lam)
        err = float(np.mean((x[idx[:cut]] @ w + b - y[idx[:cut]]) ** 2))
        if best is None or err < best[0]:
            best = (err, lam)
    _, w, b = _ridge(x, y, best[1])
    return w, b, best[1]


def _scores(pred: np.ndarray, y: np.ndarray, groups: list[int], areas: np.ndarray) -> dict:
    r2 = 1 - float(np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))
    right = pairs = 0
    by: dict[int, list[int]] = {}
    for i, gi in enumerate(groups):
        by.setdefault(gi, []).append(i)
    for members in by.values():
        for a in members:
            for b in members:
                if a < b and max(areas[a], areas[b]) >= MIN_AREA_RATIO * min(areas[a], areas[b]):
                    pairs += 1
                    right += (pred[a] > pred[b]) == (areas[a] > areas[b])
    return {"r2": round(r2, 3), "pair_order": round(right / max(pairs, 1), 3), "pairs": pairs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("phantom", help="a phantom folder with manifest.jsonl and scenes.jsonl")
    p.add_argument("--train", type=int, default=3000, help="train images to fit on (default 3000)")
    p.add_argument("--val", type=int, default=800, help="val images to score on (default 800)")
    p.add_argument("--out", help="write the figures here as JSON (and a .md table beside it)")
    a = p.parse_args()
    from vital_core.bundle import load_bundle

    torch.set_grad_enabled(False)
    root = Path(a.phantom)
    scenes = {}
    for line in (root / "scenes.jsonl").read_text().splitlines():
        r = json.loads(line)
        scenes[r["id"]] = r
    phrase = {m.name: m.phrases[0] for m in MODALITIES}
    want = {"train": a.train, "val": a.val}
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    for line in (root / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        s = r["split"]
        if s in want and len(rows[s]) < want[s] and len(_lesions(scenes[r["id"]])) >= 2:
            rows[s].append(r)
    model = load_bundle(a.bundle, device="cpu", merge=True).eval()
    data = {}
    t0 = time.perf_counter()
    for split, items in rows.items():
        feats = {"patches": [], "vision": [], "lm": [], "position": []}
        y, groups, areas = [], [], []
        seen = set()
        for gi, r in enumerate(tqdm(items, desc=f"probe {split}", dynamic_ncols=True)):
            if r["image"] in seen:
                continue
            seen.add(r["image"])
            image = Image.open(root / r["image"]).convert("RGB")
            patches, pg, vis, lm, g = _features(
                model, image, f"Describe every structure and lesion in this {phrase[r['modality']]}."
            )
            for o in _lesions(scenes[r["id"]]):
                feats["patches"].append(_token_feature(patches, pg, o["cy"], o["cx"]))
                feats["vision"].append(_token_feature(vis, g, o["cy"], o["cx"]))
                feats["lm"].append(_token_feature(lm, g, o["cy"], o["cx"]))
                feats["position"].append(
                    np.array([o["cy"], o["cx"], o["cy"] ** 2, o["cx"] ** 2, o["cy"] * o["cx"]])
                )
                y.append(np.log(o["area"]))
                groups.append(gi)
                areas.append(o["area"])
        data[split] = ({k: np.stack(v) for k, v in feats.items()}, np.array(y), groups, np.array(areas))
    result = {"bundle": a.bundle, "lesions": {s: len(d[1]) for s, d in data.items()}, "probes": {}}
    (xtr, ytr, _, _), (xva, yva, gva, ava) = data["train"], data["val"]
    for name in ("position", "patches", "vision", "lm"):
        w, b, lam = _fit(xtr[name], ytr)
        result["probes"][name] = {**_scores(xva[name] @ w + b, yva, gva, ava), "ridge": lam}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))
    if a.out:
        out = Path(a.out)
        out.write_text(json.dumps(result, indent=1) + "\n")
        lines = ["| probe on | R² of log area (val) | pair order right (val) | pairs |", "|---|---|---|---|"]
        for name, v in result["probes"].items():
            lines.append(f"| {name} | {v['r2']} | {100 * v['pair_order']:.1f} % | {v['pairs']} |")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
