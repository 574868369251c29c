"""How well could a visual projector point, given this encoder? The ceiling of /explain's heatmaps.

For each sample, the query is (a) the sample's exact ROI feature (what a perfect projector would predict)
and (b) the mean ROI feature of its target class over train samples (a projector that only knows *which*
structure); pointing = the peak of the heatmap (contrast map, as /explain; and the plain cosine) lies in a
mask cell. Run it on the validation split to choose encoder settings; report test figures elsewhere.

    python bench/encoder_oracle.py --encoder data/tiny-build/encoder \\
        --manifest data/tiny-build/phantom/manifest.jsonl --split val --n 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True, help="SiglipModel / SiglipVisionModel directory")
    ap.add_argument("--manifest", default="data/tiny-build/phantom/manifest.jsonl")
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=300, help="samples of --split to score")
    ap.add_argument("--class-samples", type=int, default=600, help="train samples for the class means")
    args = ap.parse_args(argv)

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from index_builder.encoder import load_encoder
    from index_builder.heatmap import contrast_grid, cosine_grid
    from index_builder.roi import extract_roi
    from training.analysis import mask_cells, step_grounding
    from training.data.manifest import load_manifest
    from vital_core.presets import tiny

    enc = load_encoder(dataclasses.replace(tiny().encoder, path=args.encoder), device="cpu")
    samples = load_manifest(args.manifest)
    scored = [s for s in samples if s.split == args.split][: args.n]
    train = [s for s in samples if s.split == "train"][: args.class_samples]

    def roi(s):
        with Image.open(s.image) as im, Image.open(s.mask) as m:
            return extract_roi(enc, im.convert("RGB"), m).feature

    by_class = defaultdict(list)
    for s in tqdm(train, desc="class means"):
        by_class[(s.modality, s.target)].append(roi(s))
    means = {k: np.mean(v, 0) for k, v in by_class.items()}
    hits = defaultdict(list)
    for s in tqdm(scored, desc=args.split):
        with Image.open(s.image) as im:
            grid = enc.encode([im.convert("RGB")])[0]
        with Image.open(s.mask) as m:
            cells = mask_cells(np.asarray(m.convert("L")) > 127, enc.grid)
        queries = {"exact_roi": roi(s), "class_mean": means.get((s.modality, s.target))}
        for name, q in queries.items():
            if q is None:
                continue
            hits[f"{name}_contrast"].append(step_grounding(contrast_grid(q, grid), cells)["pointing"])
            hits[f"{name}_plain"].append(step_grounding(cosine_grid(q, grid), cells)["pointing"])
    out = {k: round(float(np.mean(v)), 3) for k, v in hits.items()}
    out.update(encoder=args.encoder, split=args.split, n=len(scored))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
