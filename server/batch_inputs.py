"""What `vital batch` answers: items from a five-tuple manifest, a folder of images, or a list of DICOMweb UIDs.

An item is an id, a question, and a way to get its image bytes (read only when the item's turn comes, so a
folder of thousands of series is never held in memory). Loading an item's bytes may fail (unreadable file, PACS
refusal): that is the item's error, recorded in the output; it never stops the run. What is wrong with the input
as a whole (no such file, no items, duplicate ids) is a `BatchInputError` before anything runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vital_core.imaging import ImagingLimits, series_files, sniff

ImageSource = bytes | list[tuple[str, bytes]]
"""File bytes, or the (name, bytes) instances of one DICOM series: what `server.images.decode_image` takes."""

SKIPPED_SUFFIXES = (".txt", ".md", ".csv", ".json", ".jsonl", ".yaml", ".yml", ".log")
"""Files in an input folder that are not images (notes, manifests, earlier outputs) and are not items."""


class BatchInputError(ValueError):
    """The input as a whole cannot be read (a CLI error, not an item's)."""


@dataclass
class BatchItem:
    """One image and question to answer."""

    id: str
    """Unique within the input; the key that resume skips by."""
    question: str
    load: Callable[[], ImageSource]
    """Reads the image bytes (raises for an unreadable item)."""
    limits: ImagingLimits | None = None
    """Decoding limits: local data gets `ImagingLimits.local()`; PACS data the server's."""
    error: tuple[str, str] | None = None
    """(code, message) known before loading (a malformed manifest row); the item is then only recorded."""


def from_manifest(path: Path) -> list[BatchItem]:
    """Items of a JSONL manifest: each row's `id`, `image` (relative to the manifest's folder; a file, or a
    folder of one DICOM series) and `question`.

    Only those three fields are read (a five-tuple training manifest, a question manifest of
    `vital build-questions`, or any JSONL with them); a row lacking one is an item with an error.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"cannot read manifest {path}: {exc}") from exc
    base = Path(os.path.abspath(path.parent))
    items = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row = {"_error": f"invalid JSON: {exc.msg} (column {exc.colno})"}
        if not isinstance(row, dict):
            row = {"_error": f"expected a JSON object, got {type(row).__name__}"}
        sid = (
            row.get("id") if isinstance(row.get("id"), str) and row["id"].strip() else f"{path.name}:{lineno}"
        )
        problem = row.get("_error") or _row_problem(row)
        image = base / row["image"] if not problem else base
        item = BatchItem(sid, str(row.get("question") or ""), _file_loader(image), ImagingLimits.local())
        if problem:
            item.error = ("invalid_item", f"{path}:{lineno}: {problem}")
        items.append(item)
    return _checked(items, str(path))


def _row_problem(row: dict) -> str | None:
    for name in ("id", "image", "question"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            return f"field {name!r}: expected a non-empty string, got {row.get(name)!r}"
    return None


def from_folder(folder: Path, question: str, exclude: tuple[Path, ...] = ()) -> list[BatchItem]:
    """Items of a folder: each image file is one item; a subfolder holding DICOM files is one series (its
    instances assembled into one volume, as `load_model_image` does with a folder); other subfolders are
    searched. A .zip is one item (a zipped series, decoded as the server decodes an uploaded zip). Ids are
    the paths relative to `folder`."""
    if not folder.is_dir():
        raise BatchInputError(f"{folder} is not a folder")
    skip = {Path(os.path.abspath(p)) for p in exclude}
    items: list[BatchItem] = []

    def visit(d: Path) -> None:
        for entry in sorted(d.iterdir()):
            if entry.name.startswith(".") or Path(os.path.abspath(entry)) in skip:
                continue
            rel = entry.relative_to(folder).as_posix()
            if entry.is_dir():
                if _holds_dicom(entry):
                    items.append(BatchItem(rel, question, _series_loader(entry), ImagingLimits.local()))
                else:
                    visit(entry)
            elif entry.is_file() and not entry.name.lower().endswith(SKIPPED_SUFFIXES):
                items.append(BatchItem(rel, question, _file_loader(entry), ImagingLimits.local()))

    visit(folder)
    return _checked(items, str(folder))


def _holds_dicom(folder: Path) -> bool:
    """True when a file directly in `folder` is a DICOM Part-10 file (the folder is then one series)."""
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            try:
                with f.open("rb") as fh:
                    if sniff(fh.read(544)) == "dicom":
                        return True
            except OSError:
                continue
    return False


def _file_loader(path: Path) -> Callable[[], ImageSource]:
    """A file's bytes; a folder (a manifest row naming a series folder) is read as one series."""

    def load() -> ImageSource:
        return _series_loader(path)() if path.is_dir() else path.read_bytes()

    return load


def _series_loader(folder: Path) -> Callable[[], ImageSource]:
    def load() -> ImageSource:
        parts = [(p.name, p.read_bytes()) for p in series_files(folder)]
        return (
            parts if len(parts) != 1 else parts[0][1]
        )  # one instance: decoded as one file, as the server does

    return load


def from_uids(path: Path, question: str, pacs_url: str | None) -> list[BatchItem]:
    """Items of a text file of DICOMweb references, one per line: `study/series` (the whole series as one
    volume) or `study/series/instance`; blank lines and `#` comments skipped. Retrieved from `pacs_url` with
    the server's DICOMweb client (`server.dicomweb`: the same bounds and error mapping as the server)."""
    if not pacs_url:
        raise BatchInputError("a UID list needs --pacs URL (the DICOMweb server to retrieve from)")
    from pydantic import ValidationError

    from server.dicomweb import fetch_instance, fetch_series
    from server.errors import describe_validation
    from server.images import limits_from
    from server.protocol import DicomwebRef
    from server.settings import Settings

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"cannot read UID list {path}: {exc}") from exc
    settings = Settings(dicomweb_url=pacs_url)
    items = []
    for lineno, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split("/")
        item = BatchItem(text, question, lambda: b"", limits_from(settings))
        try:
            if len(parts) not in (2, 3):
                raise ValueError("expected study/series or study/series/instance")
            ref = DicomwebRef(study=parts[0], series=parts[1], instance=parts[2] if len(parts) == 3 else None)
        except ValidationError as exc:
            item.error = ("invalid_item", f"{path}:{lineno}: {describe_validation(exc.errors())}")
        except ValueError as exc:
            item.error = ("invalid_item", f"{path}:{lineno}: {exc}")
        else:
            if ref.instance is None:
                item.load = lambda ref=ref: _series_parts(fetch_series(settings, ref))
            else:
                item.load = lambda ref=ref: fetch_instance(settings, ref).part10
        items.append(item)
    return _checked(items, str(path))


def _series_parts(parts: list[tuple[str, bytes]]) -> ImageSource:
    return parts if len(parts) > 1 else parts[0][1]  # as the /answer route hands a retrieved series over


def _checked(items: list[BatchItem], where: str) -> list[BatchItem]:
    """The items, unless ids repeat (resume skips by id, so a repeated id would be ambiguous)."""
    seen: set[str] = set()
    dups = sorted({i.id for i in items if i.id in seen or seen.add(i.id)})
    if dups:
        shown = ", ".join(dups[:5]) + (f" and {len(dups) - 5} more" if len(dups) > 5 else "")
        raise BatchInputError(f"{where}: ids must be unique (resume skips by id); repeated: {shown}")
    return items
