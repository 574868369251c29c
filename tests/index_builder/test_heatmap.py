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


def test_contrast_map_finds_the_region_a_shared_component_hides():
    """Patches that share a common direction: the plain cosine of an approximate query peaks on the
    background, the contrast map (the image's mean patch feature removed) on the one distinct patch."""
    from index_builder.heatmap import contrast_grid, heatmap_grid

    e = np.eye(8, dtype=np.float32)
    grid = np.tile(e[0] + 0.05 * e[2], (5, 5, 1))  # background
    grid[3, 2] = 0.6 * e[0] + e[1]  # the structure
    query = e[0] + 0.3 * e[1]  # mostly the shared direction, a little of the structure's
    plain = cosine_grid(query, grid)
    assert np.unravel_index(np.argmax(plain), plain.shape) != (3, 2)
    contrast = contrast_grid(query, grid)
    assert np.unravel_index(np.argmax(contrast), contrast.shape) == (3, 2)
    assert np.array_equal(heatmap_grid(query, grid), contrast)
    assert heatmap(query, grid, Image.new("L", (10, 10))).peak == (3, 2)  # what /explain reports
