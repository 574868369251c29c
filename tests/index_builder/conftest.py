"""Session-scoped tiny fixtures for index_builder tests (CPU, no network)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from index_builder.encoder import PatchEncoder, preprocess
from index_builder.synthetic import write_dataset
from vital_core.presets import tiny


class ColourEncoder:
    """A deterministic stand-in encoder whose features we can reason about.

    Uses the real preprocessing (square pad + resize + normalise); each patch's feature is its mean
    (R+1, G+1, B+1) plus a small constant channel, so black padding points along the constant channel,
    gray along (1, 1, 1, .) and a red ROI along (2, 0, 0, .).
    """

    def __init__(self, image_size: int = 64, patch: int = 8) -> None:
        self.image_size, self.patch = image_size, patch
        self.grid = image_size // patch
        self.hidden_size = 4

    def encode(
        self, images: Sequence[Image.Image], normalize: bool = True, block_output: bool = False
    ) -> torch.Tensor:
        x = preprocess(images, self.image_size)  # (B, 3, S, S)
        pooled = torch.nn.functional.avg_pool2d(x, self.patch) + 1.0  # (B, 3, G, G)
        const = torch.full_like(pooled[:, :1], 0.05)  # (B, 1, G, G)
        feats = torch.cat([pooled, const], 1).permute(0, 2, 3, 1)  # (B, G, G, 4)
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


@pytest.fixture(scope="session")
def tiny_encoder() -> PatchEncoder:
    return PatchEncoder(tiny().encoder, device="cpu", seed=0)


@pytest.fixture(scope="session")
def colour_encoder() -> ColourEncoder:
    return ColourEncoder()


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("syn"), 12, seed=3, height=48, width=64)


@pytest.fixture(scope="session")
def red_roi():
    """A function (h, w, rows, cols) -> (gray image with a red rectangle, the rectangle's mask)."""
    return red_roi_image


def red_roi_image(h: int, w: int, rows: slice, cols: slice) -> tuple[Image.Image, np.ndarray]:
    """A gray image with a red rectangle, and the rectangle's mask."""
    arr = np.full((h, w, 3), 128, dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    arr[mask] = (255, 0, 0)
    return Image.fromarray(arr), mask
