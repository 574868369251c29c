"""/explain: re-attach the scaffolding and show, per latent step, what it says and where it looks.

Loaded once, lazily (or at start-up with VITAL_EXPLAIN_PRELOAD=true): the bundle's scaffolding
(visual projector, pj_in, auxiliary decoder), the frozen medical encoder that gives the query
image's patch grid, and — when present — the FAISS index of reference patches.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from server.errors import APIError
from vital_core.timing import StageTimer

log = logging.getLogger("vital.explain")


class Explainer:
    """The /explain pipeline on top of the serving model."""

    def __init__(self, model, scaffold, encoder, index=None):  # noqa: ANN001
        self.model = model
        self.scaffold = scaffold.eval()
        self.encoder = encoder
        self.index = index

    def explain(
        self, image: Image.Image, question: str, k: int, max_new_tokens: int, top_k: int
    ) -> dict[str, Any]:
        """Answer, then decode/project/search each latent h_1..h_K (runs on the model thread)."""
        from index_builder.heatmap import heatmap

        timer = StageTimer(self.model.device)
        ans = self.model.answer([image], [question], k=k, max_new_tokens=max_new_tokens, timer=timer)[0]
        steps = []
        with timer("explain"), torch.inference_mode():
            lat = ans.latents[1:].to(self.model.device)  # (K, H): h_1..h_K
            if lat.shape[0]:
                sentences = self.scaffold.decode(lat, self.model.tokenizer)
                queries = F.normalize(self.scaffold.vp(lat).float(), dim=-1).cpu()  # (K, D)
                grid = self.encoder.encode([image])[0]  # (G, G, D)
                nearest = (
                    self.index.search(queries.numpy(), top_k)
                    if self.index is not None
                    else [[]] * len(queries)
                )
                for i, q in enumerate(queries):
                    hm = heatmap(q, grid, image)
                    steps.append(
                        {
                            "step": i + 1,
                            "sentence": sentences[i],
                            "heatmap": {
                                "png_base64": base64.b64encode(hm.png).decode(),
                                "grid": [[round(float(v), 5) for v in row] for row in hm.grid],
                                "peak": [int(hm.peak[0]), int(hm.peak[1])],
                            },
                            "nearest": [
                                {
                                    "image_id": h.image_id,
                                    "row": int(h.row),
                                    "col": int(h.col),
                                    "score": float(h.score),
                                }
                                for h in nearest[i]
                            ],
                        }
                    )
        return {"answer": ans.text, "steps": steps, "timings_ms": timer.totals_ms()}


def index_dir(svc) -> Path:  # noqa: ANN001
    """Where the FAISS index is read from: VITAL_INDEX_PATH, else BUNDLE/index."""
    return Path(svc.settings.index_path) if svc.settings.index_path else Path(svc.settings.bundle) / "index"


def explain_unavailable_reason(svc) -> tuple[int, str, str] | None:  # noqa: ANN001
    """(status, code, message) when /explain cannot be served, else None."""
    if not svc.settings.explain:
        return 404, "explain_disabled", "explanation is disabled on this server (VITAL_EXPLAIN=false)"
    if svc.explainer is not None:
        return None
    if not (Path(svc.settings.bundle) / "scaffold.safetensors").is_file():
        return (
            503,
            "explain_unavailable",
            "this bundle has no scaffolding (scaffold.safetensors); /explain needs it",
        )
    return None


async def get_explainer(svc) -> Explainer:  # noqa: ANN001
    """The explainer, loading it on first use (once, under a lock)."""
    reason = explain_unavailable_reason(svc)
    if reason:
        raise APIError(reason[0], reason[2], reason[1])
    if svc.explainer is not None:
        return svc.explainer
    async with svc.explain_lock:
        if svc.explainer is None:
            try:
                svc.explainer = await svc.engine.run_exclusive(load_explainer, svc)
            except APIError:
                raise
            except Exception as exc:
                log.exception("loading the explanation modules failed")
                raise APIError(
                    503, f"explanation modules failed to load: {exc}", "explain_unavailable"
                ) from exc
    return svc.explainer


def load_explainer(svc) -> Explainer:  # noqa: ANN001
    """Scaffolding + encoder + optional index for the served bundle."""
    from index_builder.encoder import load_encoder
    from vital_core.bundle import load_scaffold

    bundle = Path(svc.settings.bundle)
    model = svc.model
    scaffold = load_scaffold(bundle, device=svc.device)
    enc_cfg = model.config.encoder
    if (bundle / "encoder").is_dir():
        import dataclasses

        enc_cfg = dataclasses.replace(enc_cfg, path=str(bundle / "encoder"))
    encoder = load_encoder(enc_cfg, device=svc.device, seed=model.config.seed)
    index = None
    idir = index_dir(svc)
    if (idir / "index.faiss").is_file():
        from index_builder.faiss_index import PatchIndex

        index = PatchIndex.load(idir)
        log.info("explain: patch index with %d vectors from %s", len(index), idir)
    else:
        log.warning("explain: no patch index at %s; nearest patches will be empty", idir)
    return Explainer(model, scaffold, encoder, index)
