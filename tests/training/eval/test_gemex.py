"""GEMeX: v1 and ThinkVG readers, choice answers as letters, and box grounding of a heatmap."""

from __future__ import annotations

import numpy as np
import pytest
from eval_layouts import GEMEX_IMAGE

from training.eval.gemex import boxes_on_grid, heatmap_box, parse_response, step_box_grounding
from training.eval.metrics import item_correct
from training.eval.vqa_datasets import BenchmarkError, detect_format, load_benchmark


def test_v1_all_four_question_files(gemex_v1):
    assert detect_format("gemex", gemex_v1) == "v1-jsonl"
    items = {it.question_type: it for it in load_benchmark("gemex", gemex_v1)}
    assert set(items) == {"closed_ended", "open_ended", "single_choice", "multi_choice"}
    closed, single, multi = items["closed_ended"], items["single_choice"], items["multi_choice"]
    assert closed.kind == "yesno" and closed.answer == "No." and item_correct("no", closed)
    assert items["open_ended"].kind == "open"
    assert single.label == "C" and single.answer == "1.2 cm" and item_correct("The answer is C.", single)
    assert multi.kind == "multi_choice" and multi.labels == ("A", "B", "D")
    assert item_correct("A, B, D", multi) and not item_correct("A, B", multi)
    assert multi.boxes == ((43, 38, 117, 147), (99, 105, 186, 154)) and multi.box_frame == (224, 224)
    assert closed.image == gemex_v1 / "files" / GEMEX_IMAGE and closed.load_image().size == (64, 48)
    one = load_benchmark("gemex", gemex_v1 / "test" / "multi_choice_question.jsonl")
    assert [it.label for it in one] == ["A,B,D"]


def test_v1_images_elsewhere_need_image_dir(gemex_v1, tmp_path):
    with pytest.raises(BenchmarkError, match="images missing"):
        load_benchmark("gemex", gemex_v1 / "test", image_dir=tmp_path)
    assert load_benchmark("gemex", gemex_v1 / "test", image_dir=gemex_v1 / "files")


def test_thinkvg_parquet(gemex_thinkvg):
    assert detect_format("gemex", gemex_thinkvg) == "thinkvg-parquet"
    closed, single = load_benchmark("gemex", gemex_thinkvg, "train")
    assert closed.kind == "yesno" and closed.boxes == ((8, 19, 168, 142),)
    assert closed.image == gemex_thinkvg / "files" / GEMEX_IMAGE  # the leading '/' is dropped
    assert single.question == "Where is the granuloma?" and single.choices == (
        "Left lung",
        "Right hemidiaphragm",
    )
    assert single.label == "B" and single.answer == "Right hemidiaphragm"
    with pytest.raises(BenchmarkError, match="splits here: train"):
        load_benchmark("gemex", gemex_thinkvg, "test")


def test_parse_response():
    answer, boxes = parse_response(
        "<think>heart [1, 2, 30, 40] and [5, 5, 5, 9]</think><answer> Yes. </answer>"
    )
    assert answer == "Yes." and boxes == ((1, 2, 30, 40),)  # a degenerate box is dropped


def test_boxes_on_grid_follow_the_encoders_square_padding():
    # a 200 x 100 image is padded to 200 x 200 with 50 rows on top; box frame 224 x 224 scales x by 200/224
    g = boxes_on_grid([(0, 0, 224, 224)], (224, 224), (200, 100), grid=20)
    assert g.tolist() == [[0.0, 5.0, 20.0, 15.0]]


def test_pointing_and_heatmap_box_iou():
    cos = np.zeros((8, 8), dtype=np.float32)
    cos[2:4, 5:7] = 1.0  # a hot 2 x 2 block: rows 2-3, cols 5-6
    assert heatmap_box(cos).tolist() == [5, 2, 7, 4]
    hit = step_box_grounding(cos, np.array([[5.0, 2.0, 7.0, 4.0]]))
    assert hit == {"pointing": 1.0, "box_iou": 1.0}
    half = step_box_grounding(cos, np.array([[0.0, 0.0, 2.0, 2.0], [5.0, 2.0, 9.0, 4.0]]))
    assert half["pointing"] == 1.0 and half["box_iou"] == pytest.approx(0.5)  # best of the two boxes
    miss = step_box_grounding(cos, np.array([[0.0, 0.0, 2.0, 2.0]]))
    assert miss == {"pointing": 0.0, "box_iou": 0.0}


def test_region_box_against_reference_boxes_in_image_pixels():
    """/explain's region box (index_builder.regions), on the 200 x 100 image's own pixels, against boxes
    given in a 224 x 224 frame."""
    from training.eval.gemex import boxes_on_image, region_box_grounding

    px = boxes_on_image([(112, 0, 224, 224)], (224, 224), (200, 100))
    assert px.tolist() == [[100.0, 0.0, 200.0, 100.0]]
    cos = np.zeros((8, 8), dtype=np.float32)
    cos[2:6, 4:8] = 1.0  # the right half of the content rows (rows 2-5 of 8 hold the image: 50 px pad on top)
    hit = region_box_grounding(cos, px, (200, 100))
    assert hit["region_box_iou"] > 0.7 and hit["region_acc50"] == 1.0
    left = region_box_grounding(cos, boxes_on_image([(0, 0, 100, 224)], (224, 224), (200, 100)), (200, 100))
    assert left == {"region_box_iou": 0.0, "region_acc50": 0.0}
