"""Readers for the medical VQA benchmarks in the layouts people download, from local paths only.

`load_benchmark(name, path, split, fmt=None)` detects the layout from the path (`detect_format`), or takes
`fmt` to force one, reads every item, and checks that every image exists — all before a model loads.
Sources, fields and rules of each layout: docs/evaluation.md ("Benchmark layouts").

| name | formats |
|---|---|
| vqa-rad | `osf-json` (`VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`), `hf-parquet` |
| slake | `json` (`{train,validate,test}.json` + `imgs/`) |
| pathvqa | `vqa-pkl` (`qas/{split}_vqa.pkl`), `qa-pkl` (`qas/{split}/{split}_qa.pkl`), `hf-parquet` |
| pmc-vqa | `csv` (v1 `test_clean.csv`/`test.csv` with `Answer_label`; v2 `test_2.csv`, letter in `Answer`) |
| gemex | `v1-jsonl` (`test/*_question.jsonl`), `thinkvg-parquet` (training.eval.gemex) |
| five-tuple | `manifest` (this project's JSONL, docs/dataset.md) |
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from training.eval import gemex
from training.eval.files import (
    image_bytes,
    need,
    parquet_files,
    read_csv,
    read_json,
    read_parquet,
    read_pickle,
    split_names,
)
from training.eval.items import (
    CLOSED_TYPES,
    LETTERS,
    BenchItem,
    BenchmarkError,
    check_images,
    from_sample,
)

__all__ = [
    "CLOSED_TYPES",
    "LETTERS",
    "BenchItem",
    "BenchmarkError",
    "from_sample",
    "FORMATS",
    "BENCHMARKS",
    "detect_format",
    "load_benchmark",
    "closed_kind",
]

_CHOICE_PREFIX = re.compile(r"^\s*\(?([A-Ha-h])\s*[:.)]\s*")
YES_NO = ("yes", "no")


def closed_kind(answer: str) -> str:
    """yesno when the reference answer is yes/no (any case, trailing full stop), otherwise exact match."""
    return "yesno" if answer.strip().lower().rstrip(".") in YES_NO else "exact"


def _yes_no_rule(answer: str) -> str:
    """Closed/open for layouts without an answer type: yes/no answers closed, everything else open."""
    return "yesno" if closed_kind(answer) == "yesno" else "open"


# ---- VQA-RAD ----------------------------------------------------------------------------------------


def _vqa_rad_json(path: Path, split: str, image_dir: Path | None) -> list[BenchItem]:
    if path.is_dir():
        files = _osf_jsons(path)
        if len(files) != 1:
            raise BenchmarkError(f"{path}: expected exactly one VQA-RAD JSON file, found {len(files)}")
        path = files[0]
    rows = read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a JSON list of questions")
    if image_dir is None:
        cands = [path.parent / "VQA_RAD Image Folder", path.parent / "images", path.parent]
        image_dir = next(c for c in cands if c.is_dir())
    items = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise BenchmarkError(f"{path} item {i}: expected a JSON object")
        need(r, ("image_name", "question", "answer", "answer_type"), f"{path} item {i}")
        phrase = str(r.get("phrase_type", "test"))
        if split != "all" and (phrase.startswith("test") != (split == "test")):
            continue
        answer, closed = str(r["answer"]).strip(), str(r["answer_type"]).strip().upper().startswith("CLOSED")
        items.append(
            BenchItem(
                id=str(r.get("qid", i)),
                question=str(r["question"]),
                answer=answer,
                kind=closed_kind(answer) if closed else "open",
                image=Path(image_dir) / str(r["image_name"]),
                question_type=str(r.get("question_type", "unknown")).strip().upper() or "unknown",
                modality=str(r.get("image_organ", "unknown")).strip().upper() or "unknown",
                benchmark="vqa-rad",
            )
        )
    return items


def _vqa_rad_parquet(path: Path, split: str, image_dir: Path | None) -> list[BenchItem]:
    """flaviagiammarino/vqa-rad: `image` {bytes, path}, `question`, `answer`; no answer type (yes/no rule)."""
    items = []
    for f in parquet_files(path, split):
        for i, r in enumerate(read_parquet(f, ("image", "question", "answer"))):
            answer = str(r["answer"]).strip()
            kind = _yes_no_rule(answer)
            items.append(
                BenchItem(
                    id=f"{f.stem.split('-')[0]}-{i}",
                    question=str(r["question"]),
                    answer=answer,
                    kind=kind,
                    image_bytes=image_bytes(r["image"], f"{f} row {i}"),
                    question_type="yes/no" if kind == "yesno" else "other",
                    benchmark="vqa-rad",
                )
            )
    return items


# ---- SLAKE ------------------------------------------------------------------------------------------


def _slake(path: Path, split: str, image_dir: Path | None, lang: str = "en") -> list[BenchItem]:
    if path.is_dir():
        found = [path / f"{n}.json" for n in split_names(split) if (path / f"{n}.json").is_file()]
        path = found[0] if found else path / f"{split}.json"
    rows = read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a JSON list of questions")
    imgs = Path(image_dir) if image_dir else path.parent / "imgs"
    items = []
    for i, r in enumerate(rows):
        need(r, ("img_name", "question", "answer", "answer_type", "q_lang"), f"{path} item {i}")
        if r["q_lang"] != lang:
            continue
        answer, closed = str(r["answer"]).strip(), str(r["answer_type"]).strip().upper() == "CLOSED"
        items.append(
            BenchItem(
                id=str(r.get("qid", i)),
                question=str(r["question"]),
                answer=answer,
                kind=closed_kind(answer) if closed else "open",
                image=imgs / r["img_name"],
                question_type=str(r.get("content_type", "unknown")),
                modality=str(r.get("modality", "unknown")),
                benchmark="slake",
            )
        )
    return items


# ---- PathVQA ----------------------------------------------------------------------------------------


def _pathvqa_item(id_: str, question: str, answer: str, **image) -> BenchItem:
    answer = str(answer).strip()
    kind = _yes_no_rule(answer)
    return BenchItem(
        id_,
        str(question),
        answer,
        kind,
        question_type="yes/no" if kind == "yesno" else "other",
        modality="pathology",
        benchmark="pathvqa",
        **image,
    )


def _pathvqa_root(pkl: Path) -> Path:
    """The dataset root (the folder holding `qas/` and `images/`) of a pickle under `qas/`."""
    for parent in pkl.parents:
        if parent.name == "qas":
            return parent.parent
    return pkl.parent


def _find_pkl(path: Path, split: str, kind: str) -> Path:
    if path.is_file():
        return path
    for name in split_names(split):
        for cand in (
            [path / "qas" / f"{name}_vqa.pkl", path / f"{name}_vqa.pkl"]
            if kind == "vqa-pkl"
            else [path / "qas" / name / f"{name}_qa.pkl", path / name / f"{name}_qa.pkl"]
        ):
            if cand.is_file():
                return cand
    raise BenchmarkError(f"{path}: no PathVQA {kind} file for split {split!r}")


def _pathvqa_image(root: Path, split: str, name: str, image_dir: Path | None) -> Path:
    name = name if Path(name).suffix else f"{name}.jpg"
    if image_dir is not None:
        return Path(image_dir) / name
    folder = name.split("_")[0] if name.split("_")[0] in ("train", "val", "test") else split
    return root / "images" / folder / name


def _pathvqa_vqa_pkl(path: Path, split: str, image_dir: Path | None) -> list[BenchItem]:
    """`qas/{split}_vqa.pkl`: rows `img_id`, `sent` (question), `label` ({answer: score}), `answer_type`."""
    pkl = _find_pkl(path, split, "vqa-pkl")
    rows, root = read_pickle(pkl), _pathvqa_root(pkl)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{pkl}: expected a list of question records")
    items = []
    for i, r in enumerate(rows):
        need(r, ("img_id", "sent", "label"), f"{pkl} item {i}")
        label = r["label"]
        if isinstance(label, dict):
            if not label:
                raise BenchmarkError(f"{pkl} item {i}: empty label")
            answer = max(label, key=lambda a: label[a])
        else:
            answer = str(label)
        img = _pathvqa_image(root, split, str(r["img_id"]), image_dir)
        items.append(_pathvqa_item(str(r.get("question_id", f"{split}-{i}")), r["sent"], answer, image=img))
    return items


def _pathvqa_qa_pkl(path: Path, split: str, image_dir: Path | None) -> list[BenchItem]:
    """`qas/{split}/{split}_qa.pkl`: rows `image`, `question`, `answer`; images in `images/{split}/`."""
    pkl = _find_pkl(path, split, "qa-pkl")
    rows, root = read_pickle(pkl), _pathvqa_root(pkl)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{pkl}: expected a list of question records")
    items = []
    for i, r in enumerate(rows):
        need(r, ("image", "question", "answer"), f"{pkl} item {i}")
        img = _pathvqa_image(root, split, str(r["image"]), image_dir)
        items.append(_pathvqa_item(f"{split}-{i}", r["question"], r["answer"], image=img))
    return items


def _pathvqa_parquet(path: Path, split: str, image_dir: Path | None) -> list[BenchItem]:
    items = []
    for f in parquet_files(path, split):
        for i, r in enumerate(read_parquet(f, ("image", "question", "answer"))):
            data = image_bytes(r["image"], f"{f} row {i}")
            items.append(
                _pathvqa_item(f"{f.stem.split('-')[0]}-{i}", r["question"], r["answer"], image_bytes=data)
            )
    return items


# ---- PMC-VQA ----------------------------------------------------------------------------------------

PMC_FILES = {"test": ("test_2.csv", "test_clean.csv", "test.csv"), "train": ("train_2.csv", "train.csv")}
"""Files tried, in order, when --data is a PMC-VQA folder (v2 first)."""


def _pmc_gold(r: dict, letters: list[str], choices: tuple[str, ...], where: str) -> str:
    """The gold letter: `Answer_label` (v1), else a letter in `Answer` (v2), else `Answer`'s option text."""
    label = r.get("Answer_label", "").strip().upper()
    if not label:
        ans = r.get("Answer", "").strip()
        m = _CHOICE_PREFIX.match(ans) or re.fullmatch(r"\(?([A-Ha-h])\)?", ans)
        if m:
            label = m.group(1).upper()
        else:
            hits = [LETTERS[i] for i, c in enumerate(choices) if c and c.lower() == ans.lower()]
            label = hits[0] if len(hits) == 1 else ""
    if label not in letters:
        raise BenchmarkError(f"{where}: gold answer {label or r.get('Answer', '')!r} is not one of {letters}")
    return label


def _pmc_vqa(path: Path, split: str, image_dir: Path | None) -> list[BenchItem]:
    if path.is_dir():
        names = PMC_FILES.get(split, (f"{split}.csv",))
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise BenchmarkError(f"{path}: none of {', '.join(names)} found")
        path = found[0]
    rows = read_csv(path)
    if not rows:
        raise BenchmarkError(f"{path}: no rows")
    need(rows[0], ("Figure_path", "Question", "Choice A", "Choice B"), f"{path} header")
    if "Answer_label" not in rows[0] and "Answer" not in rows[0]:
        raise BenchmarkError(f"{path} header: missing field Answer_label (v1) or Answer (v2)")
    cands = [Path(image_dir)] if image_dir else [path.parent / "images", path.parent / "figures", path.parent]
    first = rows[0]["Figure_path"].strip()
    img_dir = next(
        (c for c in cands if (c / first).is_file()), next((c for c in cands if c.is_dir()), cands[0])
    )
    items = []
    for i, r in enumerate(rows):
        where = f"{path} row {i + 2}"
        opts = [c for c in "ABCDEFGH" if f"Choice {c}" in r]
        choices = tuple(_CHOICE_PREFIX.sub("", r[f"Choice {c}"]).strip() for c in opts)
        letters = [LETTERS[j] for j, c in enumerate(choices) if c]
        label = _pmc_gold(r, letters, choices, where)
        items.append(
            BenchItem(
                id=str(r.get("index", i)).strip() or str(i),
                question=r["Question"].strip(),
                answer=choices[LETTERS.index(label)],
                kind="choice",
                image=img_dir / r["Figure_path"].strip(),
                choices=choices,
                label=label,
                question_type="choice",
                modality="figure",
                benchmark="pmc-vqa",
            )
        )
    return items


# ---- five-tuple manifests -----------------------------------------------------------------------------


def _five_tuple(path: Path, split: str, image_dir: Path | None) -> list[BenchItem]:
    from training.data.manifest import ManifestError, load_manifest

    try:
        return [from_sample(s) for s in load_manifest(path) if s.split == split]
    except (ManifestError, FileNotFoundError) as exc:
        raise BenchmarkError(str(exc).splitlines()[0]) from exc


# ---- registry and detection ---------------------------------------------------------------------------

Loader = Callable[[Path, str, "Path | None"], list[BenchItem]]
FORMATS: dict[str, dict[str, Loader]] = {
    "vqa-rad": {"osf-json": _vqa_rad_json, "hf-parquet": _vqa_rad_parquet},
    "slake": {"json": _slake},
    "pathvqa": {"vqa-pkl": _pathvqa_vqa_pkl, "qa-pkl": _pathvqa_qa_pkl, "hf-parquet": _pathvqa_parquet},
    "pmc-vqa": {"csv": _pmc_vqa},
    "gemex": {"v1-jsonl": gemex.load_v1, "thinkvg-parquet": gemex.load_thinkvg},
    "five-tuple": {"manifest": _five_tuple},
}
"""Benchmark name → layout name → reader(path, split, image_dir)."""
BENCHMARKS = tuple(FORMATS)


def _has(path: Path, *patterns: str) -> bool:
    """Whether `path` or its `qas/`, `data/`, `test/` sub-folders match a pattern (no deep walk: image trees are big)."""
    return any(
        any(d.glob(pat)) for d in (path, path / "qas", path / "data", path / "test") for pat in patterns
    )


def _osf_jsons(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.json") if not p.name.startswith((".", "dataset_info")))


def detect_format(name: str, path: Path, split: str = "test") -> str:
    """The layout of `path` for benchmark `name` (file suffix, file names, or a folder's contents)."""
    formats = FORMATS[name]
    if len(formats) == 1:
        return next(iter(formats))
    suffix, fname = path.suffix.lower(), path.name
    if path.is_file():
        if suffix == ".parquet":
            return "thinkvg-parquet" if name == "gemex" else "hf-parquet"
        if name == "pathvqa" and suffix == ".pkl":
            return "qa-pkl" if fname.endswith("_qa.pkl") else "vqa-pkl"
        if name == "vqa-rad" and suffix == ".json":
            return "osf-json"
        if name == "gemex" and suffix in (".jsonl", ".json"):
            return "v1-jsonl"
    elif path.is_dir():
        if name == "pathvqa":
            if _has(path, "*_vqa.pkl"):
                return "vqa-pkl"
            if _has(path, "*_qa.pkl", "*/*_qa.pkl"):
                return "qa-pkl"
        if name == "vqa-rad" and _osf_jsons(path):
            return "osf-json"
        if name == "gemex" and (_has(path, "*_question.jsonl") or any(path.glob("*/*_question.jsonl"))):
            return "v1-jsonl"
        if _has(path, "*.parquet"):
            return "thinkvg-parquet" if name == "gemex" else "hf-parquet"
    raise BenchmarkError(
        f"{path}: cannot tell which {name} layout this is; pass --format ({', '.join(formats)})"
    )


def load_benchmark(
    name: str,
    path: str | Path,
    split: str = "test",
    *,
    fmt: str | None = None,
    image_dir: str | Path | None = None,
    check: bool = True,
) -> list[BenchItem]:
    """Load benchmark `name` from a local path in layout `fmt` (detected when None); check every image."""
    if name not in FORMATS:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"{path}: not found")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise BenchmarkError(f"{image_dir}: image folder not found")
    fmt = fmt or detect_format(name, path, split)
    if fmt not in FORMATS[name]:
        raise BenchmarkError(f"unknown --format {fmt!r} for {name}; choose from {', '.join(FORMATS[name])}")
    try:
        items = FORMATS[name][fmt](path, split, Path(image_dir) if image_dir else None)
    except (KeyError, TypeError, AttributeError) as exc:  # a row of an unexpected shape
        raise BenchmarkError(f"{path}: not a {name} {fmt} file ({type(exc).__name__}: {exc})") from exc
    if not items:
        raise BenchmarkError(f"{path}: no {name} questions in split {split!r}")
    if check:
        check_images(items, f"{path}")
    return items
