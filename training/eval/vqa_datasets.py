"""Loaders for the evaluation benchmarks in their published layouts, from local paths only.

Every loader returns `BenchItem`s: one question, its reference answer, how it is scored (`kind`), and
where its image is. Nothing is downloaded; the exact files and fields each loader expects are listed in
docs/evaluation.md ("Benchmark layouts").

| name | layout |
|---|---|
| vqa-rad | one JSON list (`image_name`, `question`, `answer`, `answer_type`, `phrase_type`, ...), images folder |
| slake | `{train,validate,test}.json` (`img_name`, `question`, `answer`, `answer_type`, `q_lang`), `imgs/` |
| pathvqa | `qas/{split}_vqa.pkl` + `images/{split}/<image>.jpg`, or the HF parquet (`image.bytes`) |
| pmc-vqa | CSV (`Figure_path`, `Question`, `Answer`, `Choice A`..`Choice D`, `Answer_label`), `images/` |
| five-tuple | this project's JSONL manifest (docs/dataset.md), one split |
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from training.dataset import Sample

CLOSED_TYPES = ("yesno", "location_choice", "identify")
"""Five-tuple question types scored by closed-ended accuracy."""
KINDS = ("yesno", "choice", "location_choice", "exact", "open")
"""How an item is scored: the first four by accuracy (closed-ended), `open` by token-F1."""
LETTERS = "ABCDEFGH"
_CHOICE_PREFIX = re.compile(r"^\s*\(?([A-Ha-h])\s*[:.)]\s*")


class BenchmarkError(ValueError):
    """A benchmark file that is missing or not in the expected layout."""


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question, its reference answer and how to score it."""

    id: str
    question: str
    """The question as published (without choices)."""
    answer: str
    """Reference answer text (for multiple choice: the text of the correct option)."""
    kind: str
    """yesno, choice, location_choice, exact (closed-ended) or open (see KINDS)."""
    image: Path | None = None
    image_bytes: bytes | None = None
    """Encoded image (parquet layouts) when there is no file."""
    choices: tuple[str, ...] = ()
    """Multiple-choice options in letter order (A, B, ...)."""
    label: str | None = None
    """The correct option's letter (multiple choice)."""
    question_type: str = "unknown"
    modality: str = "unknown"
    benchmark: str = ""

    @property
    def answer_type(self) -> str:
        """closed or open."""
        return "open" if self.kind == "open" else "closed"

    @property
    def prompt(self) -> str:
        """What the model is asked: the question, plus the lettered options for multiple choice."""
        if not self.choices:
            return self.question
        opts = "\n".join(f"{LETTERS[i]}: {c}" for i, c in enumerate(self.choices))
        return f"{self.question}\n{opts}\nAnswer with the option's letter from the given choices."

    def load_image(self) -> Image.Image:
        """The item's image as RGB."""
        if self.image_bytes is not None:
            with Image.open(io.BytesIO(self.image_bytes)) as im:
                return im.convert("RGB")
        if self.image is None:
            raise BenchmarkError(f"{self.id}: no image")
        with Image.open(self.image) as im:
            return im.convert("RGB")


def from_sample(s: Sample) -> BenchItem:
    """A five-tuple sample as a benchmark item (yes/no, location choice and identify are closed)."""
    kind = {"yesno": "yesno", "location_choice": "location_choice", "identify": "exact"}.get(
        s.question_type, "open"
    )
    return BenchItem(s.id, s.question, s.answer, kind, image=Path(s.image), question_type=s.question_type,
                     modality=s.modality, benchmark="five-tuple")  # fmt: skip


def _closed_kind(answer: str) -> str:
    """yesno when the reference answer is yes/no, otherwise exact match."""
    return "yesno" if answer.strip().lower().rstrip(".") in ("yes", "no") else "exact"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"{path}: cannot read JSON ({exc})") from exc


def _need(row: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(missing)}; has {', '.join(sorted(row))}")


def load_vqa_rad(
    path: str | Path, split: str = "test", image_dir: str | Path | None = None
) -> list[BenchItem]:
    """VQA-RAD: the public JSON list; split test = phrase_type test_freeform/test_para (all if absent)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if len(files) != 1:
            raise BenchmarkError(f"{path}: expected exactly one VQA-RAD JSON file, found {len(files)}")
        path = files[0]
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a JSON list of questions")
    if image_dir is None:
        cands = [path.parent / "VQA_RAD Image Folder", path.parent / "images", path.parent]
        image_dir = next(c for c in cands if c.is_dir())
    items = []
    for i, r in enumerate(rows):
        _need(r, ("image_name", "question", "answer", "answer_type"), f"{path} item {i}")
        phrase = str(r.get("phrase_type", "test"))
        if split != "all" and (phrase.startswith("test") != (split == "test")):
            continue
        answer, closed = str(r["answer"]).strip(), str(r["answer_type"]).strip().upper().startswith("CLOSED")
        items.append(BenchItem(
            id=str(r.get("qid", i)), question=str(r["question"]), answer=answer,
            kind=_closed_kind(answer) if closed else "open", image=Path(image_dir) / r["image_name"],
            question_type=str(r.get("question_type", "unknown")).strip().upper() or "unknown",
            modality=str(r.get("image_organ", "unknown")).strip().upper() or "unknown", benchmark="vqa-rad",
        ))  # fmt: skip
    return items


def load_slake(path: str | Path, split: str = "test", lang: str = "en") -> list[BenchItem]:
    """SLAKE: `<root>/<split>.json` (split validate or val) and `<root>/imgs/`; only `q_lang == lang`."""
    path = Path(path)
    if path.is_dir():
        name = "validate" if split in ("val", "validate") else split
        path = path / f"{name}.json"
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a JSON list of questions")
    imgs = path.parent / "imgs"
    items = []
    for i, r in enumerate(rows):
        _need(r, ("img_name", "question", "answer", "answer_type", "q_lang"), f"{path} item {i}")
        if r["q_lang"] != lang:
            continue
        answer, closed = str(r["answer"]).strip(), str(r["answer_type"]).strip().upper() == "CLOSED"
        items.append(BenchItem(
            id=str(r.get("qid", i)), question=str(r["question"]), answer=answer,
            kind=_closed_kind(answer) if closed else "open", image=imgs / r["img_name"],
            question_type=str(r.get("content_type", "unknown")), modality=str(r.get("modality", "unknown")),
            benchmark="slake",
        ))  # fmt: skip
    return items


def load_pathvqa(path: str | Path, split: str = "test") -> list[BenchItem]:
    """PathVQA: the pickle layout (`qas/{split}_vqa.pkl`, `images/{split}/`) or the HF parquet layout."""
    path = Path(path)
    if path.suffix == ".parquet" or (path.is_dir() and not (path / "qas").is_dir()):
        return _pathvqa_parquet(path, split)
    pkl = path if path.is_file() else path / "qas" / f"{split}_vqa.pkl"
    root = pkl.parent.parent if pkl.parent.name == "qas" else pkl.parent
    try:
        with open(pkl, "rb") as f:
            rows = pickle.load(f)  # noqa: S301 — a local file the user points us at (the published format)
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise BenchmarkError(f"{pkl}: cannot read the PathVQA pickle ({exc})") from exc
    items = []
    for i, r in enumerate(rows):
        _need(r, ("image", "question", "answer"), f"{pkl} item {i}")
        name = str(r["image"])
        name = name if Path(name).suffix else f"{name}.jpg"
        items.append(_pathvqa_item(f"{split}-{i}", r, image=root / "images" / split / name))
    return items


def _pathvqa_item(id_: str, r: dict, **image: Any) -> BenchItem:
    answer = str(r["answer"]).strip()
    kind = "yesno" if answer.lower() in ("yes", "no") else "open"
    return BenchItem(id_, str(r["question"]), answer, kind, question_type="yes/no" if kind == "yesno" else "open",
                     modality="pathology", benchmark="pathvqa", **image)  # fmt: skip


def _pathvqa_parquet(path: Path, split: str) -> list[BenchItem]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BenchmarkError(
            "reading the PathVQA parquet layout needs pyarrow: pip install pyarrow "
            "(or use the pickle layout, qas/{split}_vqa.pkl)"
        ) from exc
    files = [path] if path.is_file() else sorted(path.glob(f"**/{split}-*.parquet"))
    if not files:
        raise BenchmarkError(f"{path}: no {split}-*.parquet files")
    items = []
    for f in files:
        table = pq.read_table(f, columns=["image", "question", "answer"])
        for i, r in enumerate(table.to_pylist()):
            img = r["image"]
            data = img.get("bytes") if isinstance(img, dict) else img
            if not data:
                raise BenchmarkError(f"{f} row {i}: image has no bytes")
            items.append(_pathvqa_item(f"{f.stem}-{i}", r, image_bytes=data))
    return items


def load_pmc_vqa(path: str | Path, image_dir: str | Path | None = None) -> list[BenchItem]:
    """PMC-VQA: the test CSV; options `Choice A`..`Choice D` ("A:text"), gold letter `Answer_label`."""
    path = Path(path)
    if path.is_dir():
        path = next(
            (path / n for n in ("test_clean.csv", "test.csv") if (path / n).is_file()), path / "test.csv"
        )
    image_dir = Path(image_dir) if image_dir else path.parent / "images"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise BenchmarkError(f"{path}: cannot read ({exc})") from exc
    items = []
    for i, r in enumerate(rows):
        r = {k.strip(): v for k, v in r.items() if k}
        _need(r, ("Figure_path", "Question", "Answer_label", "Choice A", "Choice B"), f"{path} row {i + 2}")
        letters = [c for c in "ABCD" if r.get(f"Choice {c}", "").strip()]
        choices = tuple(_CHOICE_PREFIX.sub("", r[f"Choice {c}"]).strip() for c in letters)
        label = r["Answer_label"].strip().upper()
        if label not in letters:
            raise BenchmarkError(f"{path} row {i + 2}: Answer_label {label!r} is not one of {letters}")
        items.append(BenchItem(
            id=str(r.get("index", i)), question=r["Question"].strip(), answer=choices[letters.index(label)],
            kind="choice", image=image_dir / r["Figure_path"].strip(), choices=choices, label=label,
            question_type="choice", modality="figure", benchmark="pmc-vqa",
        ))  # fmt: skip
    return items


def load_five_tuple(path: str | Path, split: str = "test") -> list[BenchItem]:
    """One split of a five-tuple JSONL manifest."""
    from training.dataset import load_manifest

    return [from_sample(s) for s in load_manifest(path) if s.split == split]


BENCHMARKS: dict[str, Callable[..., list[BenchItem]]] = {
    "five-tuple": load_five_tuple,
    "vqa-rad": load_vqa_rad,
    "slake": load_slake,
    "pathvqa": load_pathvqa,
    "pmc-vqa": lambda path, split="test": load_pmc_vqa(path),
}


def load_benchmark(name: str, path: str | Path, split: str = "test") -> list[BenchItem]:
    """Load benchmark `name` (a key of BENCHMARKS) from a local path."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if not Path(path).exists():
        raise BenchmarkError(f"{path}: not found")
    items = BENCHMARKS[name](path, split=split)
    if not items:
        raise BenchmarkError(f"{path}: no {name} questions in split {split!r}")
    return items
