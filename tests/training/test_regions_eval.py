"""Region scores and saliency floors on hand-made masks (training.eval.regions)."""

from __future__ import annotations

import numpy as np
import pytest

from training.eval.regions import (
    RegionScorer,
    box_mask,
    centred_box,
    deviant_patch_box,
    mark_best,
    mask_scores,
    median_size,
    regions_table,
)


def test_mask_scores_iou_dice_box():
    a = box_mask((0, 0, 4, 4), 8, 8)
    b = box_mask((2, 0, 6, 4), 8, 8)
    s = mask_scores(a, b)
    assert s["iou"] == pytest.approx(8 / 24) and s["dice"] == pytest.approx(16 / 32)
    assert s["box_iou"] == pytest.approx(8 / 24) and s["acc50"] == 0.0
    assert mask_scores(a, a) == {"iou": 1.0, "dice": 1.0, "box_iou": 1.0, "acc50": 1.0}
    assert mask_scores(np.zeros((8, 8), bool), a)["iou"] == 0.0


def test_floors_centred_box_and_deviant_patch():
    masks = [box_mask((0, 0, 4, 2), 8, 8), box_mask((0, 0, 2, 4), 8, 8), box_mask((0, 0, 4, 4), 8, 8)]
    assert median_size(masks) == (0.5, 0.5)
    assert centred_box((0.5, 0.25), 8, 16) == (4, 3, 12, 5)
    grid = np.ones((4, 4, 3), np.float32)
    grid[2, 1] = (0, 0, 1)  # the odd one out
    assert deviant_patch_box(grid, 8, 8) == (2, 4, 4, 6)
    # a wide image: the most deviant cell in the padding is skipped for the best one inside
    grid[0, 0] = (0, 1, 0)
    assert deviant_patch_box(grid, 4, 8) == (2, 2, 4, 4)


def test_scorer_sweep_picks_the_fraction_that_fits():
    yy, xx = np.mgrid[0:8, 0:8]
    cos = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 4.0)  # a blob in the middle of an 8 x 8 grid
    truth = box_mask((12, 12, 20, 20), 32, 32)  # a tight middle square
    scorer = RegionScorer(1, [0.1, 0.5, 0.9])
    scorer.add([cos], np.ones((8, 8, 2), np.float32), [truth])
    report = scorer.report()
    assert mark_best(report) not in (0.1,)  # a region of nearly the whole image is not the best fit
    ious = {s["fraction"]: s["iou"] for s in report["sweep"]}
    assert ious[0.5] > ious[0.1]
    assert "| h1 |" in regions_table(report) and "(best)" in regions_table(report)
