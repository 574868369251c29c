"""Heatmaps: cosine grid, peak, PNG overlay."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from index_builder.heatmap import cosine_grid, heatmap, jet


def test_peak_is_the_matching_patch():
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(6, 6, 16)).astype(np.float32)
    hm = heatmap(torch.from_numpy(grid[4, 1] * 3.0), grid, Image.new("RGB", (50, 30), (40, 40, 40)))
    assert hm.peak == (4, 1)
    assert hm.grid.shape == (6, 6) and abs(hm.grid[4, 1] - 1.0) < 1e-5
    assert np.isfinite(hm.grid).all() and hm.grid.max() <= 1.0 + 1e-5
    png = Image.open(io.BytesIO(hm.png))
    assert png.size == (50, 50) and png.mode == "RGB"  # square-padded model view


def test_constant_grid_gives_no_nan():
    grid = np.ones((4, 4, 8), np.float32)
    hm = heatmap(np.ones(8), grid, Image.new("L", (16, 16)), size=32)
    assert np.isfinite(hm.grid).all() and Image.open(io.BytesIO(hm.png)).size == (32, 32)


def test_jet_endpoints_and_shape_check():
    lut = jet(np.array([0.0, 0.5, 1.0]))
    assert lut[0, 2] > 100 and lut[0, 0] == 0  # blue at 0
    assert lut[1, 1] == 255  # green in the middle
    assert lut[2, 0] > 100 and lut[2, 2] == 0  # red at 1
    with pytest.raises(ValueError, match="grid must be"):
        cosine_grid(np.ones(8), np.ones((4, 4, 7)))
