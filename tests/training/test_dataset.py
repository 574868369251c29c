"""The five-tuple manifest: validation errors name file, line, id and field; write/load round trip; splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.manifest import (
    ManifestError,
    Sample,
    assign_splits,
    load_manifest,
    normalize_answer,
    write_manifest,
)


def _row(i: int, **overrides: object) -> dict:
    row = {
        "id": f"ct-{i:05d}",
        "image": f"images/ct-{i:05d}.png",
        "mask": f"masks/ct-{i:05d}.png",
        "question": "Where is the liver located in this CT scan?",
        "answer": "The liver is in the upper left part of the image.",
        "reasoning": ["A large organ is identified.", "It is centred in the upper left part of the image."],
        "question_type": "location",
        "modality": "CT",
        "target": "liver",
        "target_type": "organ",
        "split": "train",
    }
    row.update(overrides)
    return row


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A folder with images and masks for ids ct-00000 .. ct-00004."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in range(5):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / sub / f"ct-{i:05d}.png")
    return tmp_path


def _write(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_valid_manifest_loads(data_dir: Path) -> None:
    path = _write(data_dir / "m.jsonl", [_row(i) for i in range(3)])
    samples = load_manifest(path)
    assert [s.id for s in samples] == ["ct-00000", "ct-00001", "ct-00002"]
    s = samples[0]
    assert s.k == 2 and s.roi_key == s.id and s.image == data_dir / "images" / "ct-00000.png"
    assert s.image.is_absolute() and s.mask.is_file()


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        (_row(1, reasoning=[]), "reasoning", "expected 1-4 sentences, got 0"),
        (_row(1, reasoning=["a."] * 5), "reasoning", "expected 1-4 sentences, got 5"),
        (
            _row(1, reasoning=["a."] * 3),
            "reasoning",
            "expected 2 sentences for question type 'location', got 3",
        ),
        (
            _row(1, question_type="yesno"),
            "reasoning",
            "expected 1 sentences for question type 'yesno', got 2",
        ),
        (_row(1, reasoning="one sentence."), "reasoning", "expected a list of strings"),
        (
            _row(1, question_type="multiple_choice"),
            "question_type",
            "unknown question type 'multiple_choice'",
        ),
        (_row(1, answer=3), "answer", "expected a non-empty string, got 3"),
        (_row(1, target=""), "target", "expected a non-empty string"),
        (_row(1, split="dev"), "split", "expected one of train, val, test"),
        (_row(1, colour="red"), "colour", "unknown field"),
        ({k: v for k, v in _row(1).items() if k != "modality"}, "modality", "missing"),
        (_row(1, image="images/nope.png"), "image", "file not found"),
        (_row(1, mask="masks/nope.png"), "mask", "file not found"),
        (_row(0), "id", "duplicate id, first used on line 1"),
    ],
)
def test_each_error_names_file_line_id_and_field(
    data_dir: Path, line: dict, field: str, message: str
) -> None:
    path = _write(data_dir / "m.jsonl", [_row(0), line, _row(2)])
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert f"{path}:2 (id '{line.get('id')}'): field '{field}': {message}" in str(info.value)
    assert len(info.value.errors) == 1


def test_bad_json_and_non_object_rows_name_the_line(data_dir: Path) -> None:
    path = _write(data_dir / "m.jsonl", [_row(0), '{"id": "ct-00001",', "[1, 2]"])
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.errors[0].startswith(f"{path}:2: invalid JSON")
    assert info.value.errors[1] == f"{path}:3: expected a JSON object, got list"


def test_every_bad_row_is_reported(data_dir: Path) -> None:
    rows = [_row(0, split="dev"), _row(1), _row(2, reasoning=[]), _row(3, question_type="x")]
    with pytest.raises(ManifestError) as info:
        load_manifest(_write(data_dir / "m.jsonl", rows))
    assert [e.split(":")[1].split(" ")[0] for e in info.value.errors] == ["1", "3", "4"]


def test_check_files_false_skips_missing_files(data_dir: Path) -> None:
    path = _write(data_dir / "m.jsonl", [_row(7)])
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(path)
    assert load_manifest(path, check_files=False)[0].id == "ct-00007"


def test_write_load_round_trip(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    original = _write(data_dir / "m.jsonl", [_row(i, roi_key=f"roi-{i}") for i in range(5)])
    samples = load_manifest(original)
    same_dir = write_manifest(samples, data_dir / "copy.jsonl")
    assert load_manifest(same_dir) == samples
    first = json.loads(same_dir.read_text().splitlines()[0])
    assert first["image"] == "images/ct-00000.png" and first["roi_key"] == "roi-0"
    other = write_manifest(samples, tmp_path_factory.mktemp("elsewhere") / "m.jsonl")
    assert load_manifest(other) == samples  # outside the manifest's folder: absolute paths
    assert not list(other.parent.glob(".*tmp*"))


def test_sample_defaults_roi_key_to_id() -> None:
    s = Sample("a", Path("/x.png"), Path("/m.png"), "q", "a", ["r"], "yesno", "CT", "liver", "organ", "train")
    assert s.roi_key == "a" and s.k == 1 and s.reasoning == ("r",)


def test_assign_splits_is_stratified_and_deterministic() -> None:
    keys = [f"g{i % 7}" for i in range(7 * 53)] + ["tiny"] * 3
    splits = assign_splits(keys, (0.8, 0.1, 0.1), seed=3)
    assert splits == assign_splits(keys, (0.8, 0.1, 0.1), seed=3)
    assert splits != assign_splits(keys, (0.8, 0.1, 0.1), seed=4)
    total = Counter(splits)
    n = len(keys)
    for name, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(total[name] - frac * n) <= 1
        for g in {k for k in keys if k != "tiny"}:
            count = sum(1 for k, s in zip(keys, splits) if k == g and s == name)
            assert abs(count - frac * 53) <= 2, (g, name, count)
    with pytest.raises(ValueError):
        assign_splits(keys, (0.5, 0.1, 0.1))


def test_normalize_answer() -> None:
    assert normalize_answer("  Yes. ") == "yes"
    assert normalize_answer("The liver is in the  upper LEFT part of the image.") == (
        "the liver is in the upper left part of the image"
    )
