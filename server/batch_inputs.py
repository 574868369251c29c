"""What `vital batch` answers: items from a five-tuple manifest, a folder of images, or a list of DICOMweb UIDs.

An item is plain data: an id, a question, and where its image is (an absolute path, or a DICOMweb reference and
the PACS URL); its bytes are read only when its turn comes, so a folder of thousands of series is never held in
memory, and an item can travel to another process (a Ray actor) as a row. Loading an item's bytes may fail (unreadable file, PACS
refusal): that is the item's error, recorded in the output; it never stops the run. What is wrong with the input
as a whole (no such file, no items, duplicate ids) is a `BatchInputError` before anything runs.
"""

from __future__ import annotations

import functools
import json
import os
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
    """One image and question to answer: plain data (it travels to Ray actors as a row), read when its turn comes."""

    id: str
    """Unique within the input; the key that resume skips by."""
    question: str
    source: str
    """An absolute path (a file, or a folder of one DICOM series), or `study/series[/instance]` with `pacs`."""
    pacs: str | None = None
    """DICOMweb base URL `source` is retrieved from; None for a local path."""
    error: tuple[str, str] | None = None
    """(code, message) known before loading (a malformed manifest row); the item is then only recorded."""

    def load(self) -> ImageSource:
        """The image bytes (raises OSError for an unreadable file, APIError for a PACS failure)."""
        if self.pacs is not None:
            return _retrieve(self.pacs, self.source)
        path = Path(self.source)
        if path.is_dir():  # a folder of one series' instances, as `load_model_image(folder)` reads it
            parts = [(p.name, p.read_bytes()) for p in series_files(path)]
            return parts if len(parts) != 1 else parts[0][1]  # one instance: one file, as the server does
        return path.read_bytes()

    def limits(self) -> ImagingLimits:
        """Decoding limits: local data is trusted (`ImagingLimits.local()`); PACS data gets the server's."""
        if self.pacs is None:
            return ImagingLimits.local()
        from server.images import limits_from

        return limits_from(_pacs_settings(self.pacs))


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
        image = os.path.normpath(base / row["image"]) if not problem else str(base)
        error = ("invalid_item", f"{path}:{lineno}: {problem}") if problem else None
        items.append(BatchItem(sid, str(row.get("question") or ""), image, error=error))
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
            rel, where = entry.relative_to(folder).as_posix(), os.path.abspath(entry)
            if entry.is_dir():
                if _holds_dicom(entry):
                    items.append(BatchItem(rel, question, where))
                else:
                    visit(entry)
            elif entry.is_file() and not entry.name.lower().endswith(SKIPPED_SUFFIXES):
                items.append(BatchItem(rel, question, where))

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


def from_uids(path: Path, question: str, pacs_url: str | None) -> list[BatchItem]:
    """Items of a text file of DICOMweb references, one per line: `study/series` (the whole series as one
    volume) or `study/series/instance`; blank lines and `#` comments skipped. Retrieved from `pacs_url` with
    the server's DICOMweb client (`server.dicomweb`: the same bounds, credentials and error mapping as the
    server's, from the same VITAL_* settings)."""
    if not pacs_url:
        raise BatchInputError("a UID list needs --pacs URL (the DICOMweb server to retrieve from)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"cannot read UID list {path}: {exc}") from exc
    items = []
    for lineno, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            problem = _ref_problem(text)
            error = ("invalid_item", f"{path}:{lineno}: {problem}") if problem else None
            items.append(BatchItem(text, question, text, pacs=pacs_url, error=error))
    return _checked(items, str(path))


def _ref(text: str):  # server.protocol.DicomwebRef
    from server.protocol import DicomwebRef

    parts = text.split("/")
    if len(parts) not in (2, 3):
        raise ValueError("expected study/series or study/series/instance")
    return DicomwebRef(study=parts[0], series=parts[1], instance=parts[2] if len(parts) == 3 else None)


def _ref_problem(text: str) -> str | None:
    from pydantic import ValidationError

    from server.errors import describe_validation

    try:
        _ref(text)
    except ValidationError as exc:  # before ValueError: pydantic's error is one
        return describe_validation(exc.errors())
    except ValueError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=4)
def _pacs_settings(url: str):  # server.settings.Settings
    from server.settings import Settings

    return Settings(dicomweb_url=url)


def _retrieve(url: str, text: str) -> ImageSource:
    """WADO-RS retrieve of one reference, handed over as the /answer route hands it to the decoder."""
    from server.dicomweb import fetch_instance, fetch_series

    settings, ref = _pacs_settings(url), _ref(text)
    if ref.instance is not None:
        return fetch_instance(settings, ref).part10
    parts = fetch_series(settings, ref)
    return parts if len(parts) > 1 else parts[0][1]


def _checked(items: list[BatchItem], where: str) -> list[BatchItem]:
    """The items, unless ids repeat (resume skips by id, so a repeated id would be ambiguous)."""
    seen: set[str] = set()
    dups = sorted({i.id for i in items if i.id in seen or seen.add(i.id)})
    if dups:
        shown = ", ".join(dups[:5]) + (f" and {len(dups) - 5} more" if len(dups) > 5 else "")
        raise BatchInputError(f"{where}: ids must be unique (resume skips by id); repeated: {shown}")
    return items
