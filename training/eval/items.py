"""One benchmark question (`BenchItem`), how it is scored (`KINDS`), and the one benchmark image loader.

Every reader in `training.eval` (VQA-RAD, SLAKE, PathVQA, PMC-VQA, GEMeX, five-tuple manifests) returns
`BenchItem`s; the evaluator, the metrics and the per-item predictions file only ever see this type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.data.manifest import Sample
from vital_core.imaging import ImagingError, load_model_image

CLOSED_TYPES = ("yesno", "location_choice", "identify")
"""Five-tuple question types scored by closed-ended accuracy."""
KINDS = ("yesno", "choice", "multi_choice", "location_choice", "exact", "open")
"""How an item is scored: every kind but `open` by accuracy (closed-ended), `open` by token-F1."""
LETTERS = "ABCDEFGH"

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in the pixel frame given by the item's `box_frame`."""


class BenchmarkError(ValueError):
    """A benchmark file that is missing or not in the expected layout (shown as a one-line CLI error)."""


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question, its reference answer and how to score it."""

    id: str
    question: str
    """The question as published (without choices)."""
    answer: str
    """Reference answer text (multiple choice: the correct option's text; multi-choice: the texts joined by '; ')."""
    kind: str
    """yesno, choice, multi_choice, location_choice, exact (closed-ended) or open (see KINDS)."""
    image: Path | None = None
    image_bytes: bytes | None = None
    """Encoded image (parquet layouts) when there is no file."""
    choices: tuple[str, ...] = ()
    """Options in letter order (A, B, ...); an empty string keeps the letter of a blank option."""
    label: str | None = None
    """The correct option's letter (choice) or letters joined by ',' (multi_choice, e.g. 'A,B,D')."""
    question_type: str = "unknown"
    modality: str = "unknown"
    benchmark: str = ""
    boxes: tuple[Box, ...] = ()
    """Reference regions (GEMeX `visual_locations`), in `box_frame` pixels."""
    box_frame: tuple[int, int] | None = None
    """(width, height) the boxes refer to; None = the image's own size."""

    @property
    def answer_type(self) -> str:
        """closed or open."""
        return "open" if self.kind == "open" else "closed"

    @property
    def labels(self) -> tuple[str, ...]:
        """The correct letters (one for choice, one or more for multi_choice)."""
        return tuple(x for x in (self.label or "").split(",") if x)

    @property
    def prompt(self) -> str:
        """What the model is asked: the question, plus the lettered options for multiple choice."""
        if not self.choices:
            return self.question
        opts = "\n".join(f"{LETTERS[i]}: {c}" for i, c in enumerate(self.choices) if c)
        tail = (
            "Answer with the letters of all correct options."
            if self.kind == "multi_choice"
            else "Answer with the option's letter from the given choices."
        )
        return f"{self.question}\n{opts}\n{tail}"

    def load_image(self) -> Image.Image:
        """The item's image as RGB (see `load_benchmark_image`)."""
        return load_benchmark_image(self.image_bytes if self.image_bytes is not None else self.image, self.id)


def load_benchmark_image(source: Path | bytes | None, item_id: str = "") -> Image.Image:
    """Decode one benchmark image (a file path or encoded bytes) to RGB; any failure is a BenchmarkError.

    Benchmark pixels go through the one imaging path (`vital_core.imaging`), as the server's and the
    training readers' do.
    """
    if source is None:
        raise BenchmarkError(f"{item_id}: no image")
    try:
        return load_model_image(source).to_pil().convert("RGB")
    except (ImagingError, OSError, ValueError) as exc:
        where = f"{item_id} ({source})" if isinstance(source, Path) else item_id
        raise BenchmarkError(f"{where}: cannot read the image ({exc})") from exc


def from_sample(s: Sample) -> BenchItem:
    """A five-tuple sample as a benchmark item (yes/no, location choice, identify and the phantom's
    multi-hop questions are closed)."""
    from training.phantom.multihop import is_multihop

    kind = {"yesno": "yesno", "location_choice": "location_choice", "identify": "exact"}.get(
        s.question_type, "exact" if is_multihop(s.question_type, s.answer, s.question) else "open"
    )
    return BenchItem(
        s.id,
        s.question,
        s.answer,
        kind,
        image=Path(s.image),
        question_type=s.question_type,
        modality=s.modality,
        benchmark="five-tuple",
    )


def check_images(items: list[BenchItem], name: str) -> None:
    """Raise BenchmarkError (before any model loads) when an item has no image or its file is missing."""
    missing = [it for it in items if it.image_bytes is None and (it.image is None or not it.image.is_file())]
    if missing:
        first = missing[0]
        raise BenchmarkError(
            f"{name}: {len(missing)} of {len(items)} images missing, first {first.image} (item {first.id}); "
            "point --image-dir at the image folder"
        )
    empty = [it for it in items if it.image_bytes is not None and not it.image_bytes]
    if empty:
        raise BenchmarkError(f"{name}: {len(empty)} items have empty image bytes, first item {empty[0].id}")
