"""What the step regions cost /explain: the region rule alone per image size, and /explain in process with the
region step against the same pipeline with it stubbed out (interleaved rounds, medians).

    python bench/regions_latency.py --bundle bundles/vital-tiny --out bench/results/regions-latency.json

Figures quoted in bench/results/regions-threshold.md ("Latency").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((128, 128), (120, 200), (512, 512), (2048, 1536))


def rule_ms(repeats: int = 20) -> dict[str, float]:
    """Milliseconds per `region_from_grid` call on a smooth 16 x 16 map, per original image size."""
    from index_builder.regions import region_from_grid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    grid = np.exp(-((yy - 6) ** 2 + (xx - 9) ** 2) / 6.0) + 0.05 * rng.normal(size=(16, 16))
    out = {}
    for h, w in SIZES:
        region_from_grid(grid, h, w)
        t = time.perf_counter()
        for _ in range(repeats):
            region_from_grid(grid, h, w)
        out[f"{h}x{w}"] = round(1000 * (time.perf_counter() - t) / repeats, 3)
    return out


def explain_ms(bundle: str, rounds: int = 3, n: int = 15) -> dict[str, dict[str, float]]:
    """Median /explain (K = 4) milliseconds with and without the region step, per image side."""
    import server.explain as ex
    from server.settings import Settings
    from training.phantom.generate import make_sample
    from vital_core.bundle import load_bundle

    model = load_bundle(bundle, device="cpu", scaffold=True)
    explainer = ex.load_explainer(model, Settings(bundle=bundle), "cpu")
    base = Image.fromarray(make_sample(36, seed=0).scene.to_uint8()).convert("RGB")
    real = ex.region_from_grid, ex.region_fields
    stub_mask = ex.rle(np.ones((1, 1), bool))

    class Stub:
        box, mask = (0, 0, 1, 1), None

    def timed(image: Image.Image) -> float:
        explainer.explain(image, "Where is the lesion located?", 4, 8, 5)  # warm
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            explainer.explain(image, "Where is the lesion located?", 4, 8, 5)
            ts.append(1000 * (time.perf_counter() - t))
        return statistics.median(ts)

    out = {}
    for side in (128, 512):
        image = base.resize((side, side))
        with_r, without = [], []
        for _ in range(rounds):  # interleaved, so drift on a shared machine hits both arms
            ex.region_from_grid, ex.region_fields = real
            with_r.append(timed(image))
            ex.region_from_grid = lambda *a, **k: Stub()
            ex.region_fields = lambda r: {"box": (0, 0, 1, 1), "mask": stub_mask}
            without.append(timed(image))
        ex.region_from_grid, ex.region_fields = real
        a, b = statistics.median(with_r), statistics.median(without)
        out[f"{side}x{side}"] = {
            "with_regions_ms": round(a, 1),
            "without_ms": round(b, 1),
            "ratio": round(a / b, 3),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="bundles/vital-tiny")
    p.add_argument("--out", help="write the JSON here")
    args = p.parse_args()
    report = {"region_rule_ms_per_step": rule_ms(), "explain_k4": explain_ms(args.bundle)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
