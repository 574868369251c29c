"""The README's /explain figure: for three phantom test samples, the image, the question, and per latent step
the decoded sentence and the heatmap, exactly as `POST /explain` computes them (server.explain.Explainer).

The samples are not picked by how good they look: the first test-split multi-hop question of each of the
kinds `--kinds` names, in manifest order. Each runs at its own depth K (its number of reasoning sentences),
and the figure prints the reference sentence of each step under the decoded one, so a reader can judge.

    python bench/explain_figure.py --bundle bundles/vital-tiny \\
        --manifest data/tiny-build/phantom/manifest.jsonl --out docs/img/vital-tiny-explain.png
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import sys
import textwrap
from pathlib import Path

KIND_PATTERNS = {
    "size": r"^Compare the sizes",
    "brightness": r"^Compare the .+ brighter\?$",
    "position": r"^Infer the relationship",
    "count": r"how many lesions",
    "inside": r"^Reason about the relationship: does the .+ lie inside",
    "conditional": r"^Reason step by step: if there is",
}


def pick(samples: list, kinds: list[str]) -> list:
    """The first test multi-hop sample of each kind, in manifest order."""
    from training.phantom.multihop import is_multihop

    out = []
    for kind in kinds:
        pat = re.compile(KIND_PATTERNS[kind])
        hit = next(
            (
                s
                for s in samples
                if is_multihop(s.question_type, s.answer, s.question) and pat.search(s.question)
            ),
            None,
        )
        if hit is None:
            raise SystemExit(f"no multi-hop test sample of kind {kind!r}")
        out.append(hit)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="bundles/vital-tiny")
    ap.add_argument("--manifest", default="data/tiny-build/phantom/manifest.jsonl")
    ap.add_argument("--split", default="test")
    ap.add_argument("--kinds", nargs=3, default=["size", "position", "inside"], choices=sorted(KIND_PATTERNS))
    ap.add_argument("--out", default="docs/img/vital-tiny-explain.png")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from index_builder.encoder import load_bundle_encoder
    from server.explain import Explainer
    from training.data.manifest import load_manifest
    from vital_core.bundle import load_bundle, load_scaffold

    if not Path(args.manifest).is_file():
        raise SystemExit(
            f"{args.manifest} not found: run `vital build-tiny-bundle` first (it writes the phantom)"
        )
    samples = [s for s in load_manifest(args.manifest) if s.split == args.split]
    chosen = pick(samples, args.kinds)
    model = load_bundle(args.bundle, device="cpu")
    explainer = Explainer(
        model, load_scaffold(args.bundle, device="cpu"), load_bundle_encoder(model.config, args.bundle)
    )
    kmax = max(s.k for s in chosen)
    fig, axes = plt.subplots(len(chosen), kmax + 1, figsize=(3.0 * (kmax + 1), 3.9 * len(chosen)))
    record = []
    for row, s in zip(axes, chosen):
        with Image.open(s.image) as im:
            image = im.convert("RGB")
        ex = explainer.explain(image, s.question, k=s.k, max_new_tokens=16, top_k=0)
        row[0].imshow(image)
        row[0].set_title("\n".join(textwrap.wrap(s.question, 34)), fontsize=8, loc="left")
        row[0].set_xlabel(
            f"answer: {ex.answer}  (gold: {s.answer})  K = {ex.k}\n{s.id}", fontsize=8, loc="left"
        )
        for j, ax in enumerate(row[1:]):
            if j >= len(ex.steps):
                ax.axis("off")
                continue
            step = ex.steps[j]
            ax.imshow(Image.open(io.BytesIO(base64.b64decode(step.heatmap.png_base64))))
            ax.set_title(
                f"step {j + 1}: " + "\n".join(textwrap.wrap(step.sentence, 34)), fontsize=8, loc="left"
            )
            ax.set_xlabel(
                "reference: " + "\n".join(textwrap.wrap(s.reasoning[j], 40)), fontsize=7, loc="left"
            )
            record.append({"id": s.id, "step": j + 1, "sentence": step.sentence, "reference": s.reasoning[j]})
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(json.dumps({"figure": str(out), "samples": [s.id for s in chosen], "steps": record}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
