"""Helpers that write benchmark files in their published layouts (used by conftest.py and the tests)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image


def png(path: Path, seed: int = 0, size: tuple[int, int] = (48, 40)) -> None:
    """A small RGB image at `path` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (seed * 40 % 255, 90, 160)).save(path, format="PNG")


def jpeg_bytes(seed: int) -> bytes:
    """A 40 x 40 JPEG, encoded."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (seed * 50 % 255, 20, 80)).save(buf, format="JPEG")
    return buf.getvalue()


def hf_parquet(path: Path, questions: list[str], answers: list[str]) -> None:
    """A Hugging Face `Image` + question + answer parquet file ({bytes, path} struct, as datasets writes it)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"bytes": jpeg_bytes(i), "path": f"img{i}.jpg"} for i in range(len(questions))]
    pq.write_table(pa.table({"image": images, "question": questions, "answer": answers}), path)


def pmc_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    """Write a PMC-VQA CSV in the given encoding ('utf-8-sig' adds a byte-order mark)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


GEMEX_ROWS = {
    "closed_ended": [
        {
            "question": "Is there evidence of pneumonia in this CXR?",
            "type": "disease",
            "answer": "No.",
            "visual_locations": [[43, 35, 212, 156]],
            "q_id": 0,
            "row_id": "row_0",
        }
    ],
    "open_ended": [
        {
            "question": "What condition is indicated by the low lung volume?",
            "type": "disease",
            "answer": "Restrictive lung disease.",
            "visual_locations": [[43, 35, 212, 156]],
            "q_id": 0,
            "row_id": "row_0",
        }
    ],
    "single_choice": [
        {
            "question": "What is the size of the calcified granuloma?",
            "type": "size",
            "choices": ["A: 0.5 cm", "B: 1.0 cm", "C: 1.2 cm", "D: 1.5 cm"],
            "answer": "C",
            "visual_locations": [[43, 126, 129, 150]],
            "q_id": 0,
            "row_id": "row_0",
        }
    ],
    "multi_choice": [
        {
            "question": "Which findings suggest the absence of significant lung disease?",
            "choices": [
                "A: No focal airspace consolidation",
                "B: No pleural effusions",
                "C: Low lung volume",
                "D: No pulmonary edema",
            ],
            "type": "finding",
            "answer": ["A", "B", "D"],
            "visual_locations": [[43, 38, 117, 147], [99, 105, 186, 154]],
            "q_id": 0,
            "row_id": "row_0",
        }
    ],
}
GEMEX_IMAGE = "p10/p10046166/s50051329/abea5eb9-b7c32823.jpg"
