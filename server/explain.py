"""/explain: re-attach the scaffolding and show, per latent step, what it says and where it looks.

This module holds the pipeline (`Explainer`) and how it is loaded from a bundle; it knows nothing of
the serving state. `server.service.Service` owns when it loads: once, on a helper thread, never on the
model thread, so /answer keeps running while the scaffolding (visual projector, pj_in, auxiliary
decoder), the frozen medical encoder that gives the query image's patch grid and — when present — the
FAISS index of reference patches load. Each explanation then runs as one job in the engine's queue.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from index_builder.encoder import PatchEncoderLike, load_bundle_encoder
from index_builder.heatmap import heatmap, visual_queries
from index_builder.regions import DEFAULT_FRACTION, Region, region_from_grid
from server.protocol import ExplainStep, Heatmap, Patch, RLEMask
from server.settings import Settings
from vital_core.bundle import load_scaffold
from vital_core.heads import Scaffold
from vital_core.model import VitalModel
from vital_core.timing import StageTimer

if TYPE_CHECKING:  # only for annotations: the index module pulls in faiss, loaded when an index exists
    from index_builder.faiss_index import PatchIndex

log = logging.getLogger("vital.explain")
WARM_UP_SIDE = 128
"""Side of the blank image the start-up warm-up explains (the tiny bundle's training size)."""
WARM_UP_QUESTION = "Where is the lesion located?"


@dataclass
class Explanation:
    """The answer and what each latent step h_1..h_K says and looks at."""

    answer: str
    k: int
    steps: list[ExplainStep]
    timings_ms: dict[str, float]
    region_fraction: float = DEFAULT_FRACTION
    """The threshold of the steps' regions (index_builder.regions)."""
    tokens: list[int] = field(default_factory=list)
    """The answer's generated token ids."""


def rle(mask: np.ndarray) -> RLEMask:
    """A binary mask [H, W] as COCO compressed RLE (pycocotools writes it; counts as a string)."""
    enc = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))  # column-major, as COCO wants
    return RLEMask(size=(int(enc["size"][0]), int(enc["size"][1])), counts=enc["counts"].decode("ascii"))


def region_fields(region: Region) -> dict:
    """`box` and `mask` of an ExplainStep from a step's region."""
    return {"box": tuple(int(v) for v in region.box), "mask": rle(region.mask)}


class Explainer:
    """The /explain pipeline on top of the serving model."""

    def __init__(
        self,
        model: VitalModel,
        scaffold: Scaffold,
        encoder: PatchEncoderLike,
        index: PatchIndex | None = None,
    ):
        self.model = model
        self.scaffold = scaffold.eval()
        self.encoder = encoder
        self.index = index

    def explain(
        self,
        image: Image.Image,
        question: str,
        k: int,
        max_new_tokens: int,
        top_k: int,
        region_fraction: float | None = None,
    ) -> Explanation:
        """Answer, then decode/project/search each latent h_1..h_K, with each step's region on the image
        (`region_fraction`: index_builder.regions' threshold, default DEFAULT_FRACTION). Runs on the model
        thread."""
        fraction = DEFAULT_FRACTION if region_fraction is None else region_fraction
        timer = StageTimer(self.model.device)
        ans = self.model.answer([image], [question], k=k, max_new_tokens=max_new_tokens, timer=timer)[0]
        steps: list[ExplainStep] = []
        with timer("explain"), torch.inference_mode():
            lat = ans.latents[1:].to(self.model.device)  # (K, H): h_1..h_K
            if lat.shape[0]:
                sentences = self.scaffold.decode(lat, self.model.tokenizer)
                queries = visual_queries(self.scaffold.vp, lat)  # (K, D)
                grid = self.encoder.encode([image])[0]  # (G, G, D)
                nearest = self.index.search(queries.numpy(), top_k) if self.index is not None else None
                for i, q in enumerate(queries):
                    hm = heatmap(q, grid, image)
                    region = region_from_grid(hm.grid, image.height, image.width, fraction)
                    hits = nearest[i] if nearest is not None else []
                    steps.append(
                        ExplainStep(
                            step=i + 1,
                            sentence=sentences[i],
                            heatmap=Heatmap(
                                png_base64=base64.b64encode(hm.png).decode(),
                                grid=[[round(float(v), 5) for v in row] for row in hm.grid],
                                peak=(int(hm.peak[0]), int(hm.peak[1])),
                            ),
                            nearest=[
                                Patch(
                                    image_id=h.image_id, row=int(h.row), col=int(h.col), score=float(h.score)
                                )
                                for h in hits
                            ],
                            **region_fields(region),
                        )
                    )
        return Explanation(ans.text, ans.k, steps, timer.totals_ms(), fraction, list(ans.tokens))

    def warm_up(self, k: int, max_new_tokens: int = 2) -> float:
        """Explain one blank image at K = `k` (two answer tokens, one nearest patch): every part of the
        pipeline — backbone, latent steps, auxiliary decoder, projector, encoder, heatmap, index search —
        runs once, so the first request does not pay first-call costs (kernel selection, allocator
        growth, the index's pages). Returns the seconds it took. Runs on the model thread."""
        t0 = time.perf_counter()
        image = Image.new("RGB", (WARM_UP_SIDE, WARM_UP_SIDE), (96, 96, 96))
        self.explain(image, WARM_UP_QUESTION, k, max_new_tokens, top_k=1)
        return time.perf_counter() - t0


def index_dir(settings: Settings) -> Path:
    """Where the FAISS index is read from: VITAL_INDEX_PATH, else BUNDLE/index."""
    return Path(settings.index_path) if settings.index_path else Path(settings.bundle) / "index"


def unavailable_reason(settings: Settings, loaded: bool) -> tuple[int, str, str] | None:
    """(status, code, message) when /explain cannot be served, else None (`loaded`: modules are up)."""
    if not settings.explain:
        return 404, "explain_disabled", "explanation is disabled on this server (VITAL_EXPLAIN=false)"
    if loaded:
        return None
    if not (Path(settings.bundle) / "scaffold.safetensors").is_file():
        return (
            503,
            "explain_unavailable",
            "this bundle has no scaffolding (scaffold.safetensors); /explain needs it",
        )
    return None


def load_explainer(model: VitalModel, settings: Settings, device: str) -> Explainer:
    """Scaffolding + encoder + optional index for the served bundle."""
    bundle = Path(settings.bundle)
    scaffold = load_scaffold(bundle, device=device)
    encoder = load_bundle_encoder(model.config, bundle, device=device)
    index = None
    idir = index_dir(settings)
    if (idir / "index.faiss").is_file():
        from index_builder.faiss_index import PatchIndex  # faiss only when an index exists

        index = PatchIndex.load(idir)
        log.info("explain: patch index with %d vectors from %s", len(index), idir)
    else:
        log.warning("explain: no patch index at %s; nearest patches will be empty", idir)
    return Explainer(model, scaffold, encoder, index)
