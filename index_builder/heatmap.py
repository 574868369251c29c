"""Heatmaps of one query vector over an image's patch grid (the /explain visual window).

The map is the *contrast* cosine (`contrast_grid`): the image's mean (L2-normalised) patch feature is
removed from the query and from every patch before the cosine, so the map shows what sets a cell apart
from the rest of this image. The plain cosine (`cosine_grid`) of a query with patches that share a
common component is dominated by that component: on vital-tiny's validation split its peak fell on the
step's mask 14.5% of the time at step 4 against 44.5% for the contrast map (with the exact ROI feature
as the query both point alike, 72.7% vs 73.0%; docs/evaluation.md). The server's /explain, the
evaluation and the docs' figures all call `heatmap` / `heatmap_grid`. Colours come from a small
built-in jet LUT (no matplotlib at serve time).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from index_builder.encoder import model_view


@dataclass
class Heatmap:
    """A query's cosine map over one image."""

    grid: np.ndarray
    """float32 [G, G]: contrast cosine between the query and each patch (`heatmap_grid`)."""
    peak: tuple[int, int]
    """(row, col) of the highest cosine on the grid."""
    png: bytes
    """PNG overlay on the square-padded, resized image the encoder saw."""


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape [...] -> uint8 RGB [..., 3] on the classic jet colour map."""
    v = np.clip(values, 0.0, 1.0)[..., None]  # (..., 1)
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peaks
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)  # (..., 3)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def cosine_grid(query: np.ndarray | torch.Tensor, grid: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine of a query [D] with every patch of a grid [G, G, D] -> float32 [G, G]."""
    q = torch.as_tensor(np.asarray(query, dtype=np.float32)).flatten()  # (D,)
    g = torch.as_tensor(np.asarray(grid, dtype=np.float32))  # (G, G, D)
    if g.ndim != 3 or g.shape[-1] != q.shape[0]:
        raise ValueError(f"grid must be [G, G, D={q.shape[0]}], got {tuple(g.shape)}")
    q = torch.nn.functional.normalize(q, dim=0)  # (D,)
    g = torch.nn.functional.normalize(g, dim=-1)  # (G, G, D)
    return (g @ q).numpy().astype(np.float32)  # (G, G)


def contrast_grid(query: np.ndarray | torch.Tensor, grid: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine of query [D] and every patch of grid [G, G, D] after removing the image's mean L2-normalised
    patch feature from both -> float32 [G, G] (a constant grid gives zeros)."""
    g = torch.nn.functional.normalize(
        torch.as_tensor(np.asarray(grid, dtype=np.float32)), dim=-1
    )  # (G, G, D)
    q = torch.as_tensor(np.asarray(query, dtype=np.float32)).flatten()  # (D,)
    if g.ndim != 3 or g.shape[-1] != q.shape[0]:
        raise ValueError(f"grid must be [G, G, D={q.shape[0]}], got {tuple(g.shape)}")
    mu = g.flatten(0, 1).mean(0)  # (D,)
    return cosine_grid(torch.nn.functional.normalize(q, dim=0) - mu, g - mu)


def heatmap_grid(query: np.ndarray | torch.Tensor, grid: np.ndarray | torch.Tensor) -> np.ndarray:
    """The map /explain shows for a query over a patch grid (the contrast cosine) -> float32 [G, G]."""
    return contrast_grid(query, grid)


def visual_queries(vp: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents [..., H] -> the visual projector's L2-normalised queries [..., D] (float32, on the CPU).

    What a latent step "looks at": `VP(h_k)`, compared by cosine with an image's patch grid
    (`cosine_grid`, `heatmap`) and searched in the patch index.
    """
    with torch.inference_mode():
        return torch.nn.functional.normalize(vp(latents).float(), dim=-1).cpu()  # (..., D)


def heatmap(
    query: np.ndarray | torch.Tensor,
    grid: np.ndarray | torch.Tensor,
    image: Image.Image,
    alpha: float = 0.45,
    size: int | None = None,
) -> Heatmap:
    """The map of `query` [D] over `grid` [G, G, D] (`heatmap_grid`), overlaid (jet, `alpha`) on the model's
    view of `image`.

    `size` is the overlay's side in pixels (default: the image's longer side, at most 448).
    """
    cos = heatmap_grid(query, grid)  # (G, G)
    flat = int(np.argmax(cos))
    peak = (flat // cos.shape[1], flat % cos.shape[1])
    side = size or min(max(image.width, image.height), 448)
    base = np.asarray(model_view(image, side), dtype=np.float32)  # (S, S, 3)
    lo, hi = float(cos.min()), float(cos.max())
    norm = (cos - lo) / (hi - lo) if hi > lo else np.zeros_like(cos)  # (G, G) in [0, 1]
    up = Image.fromarray(norm.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR)
    colours = jet(np.asarray(up)).astype(np.float32)  # (S, S, 3)
    blend = (1.0 - alpha) * base + alpha * colours  # (S, S, 3)
    buf = io.BytesIO()
    Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return Heatmap(grid=cos, peak=peak, png=buf.getvalue())
