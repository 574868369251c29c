"""Reading benchmark files as published: JSON, JSONL, CSV (any BOM / encoding), parquet, pickle; split aliases.

Every failure is a `BenchmarkError` naming the file, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path
from typing import Any

from training.eval.items import BenchmarkError

SPLIT_ALIASES = {
    "val": ("val", "validation", "validate", "valid", "dev"),
    "test": ("test",),
    "train": ("train",),
}
"""Published split names tried for each `--split` value (`val`, `validation`, `validate` are one split)."""


def split_names(split: str) -> tuple[str, ...]:
    """The published names a requested split may have, most common first."""
    for names in SPLIT_ALIASES.values():
        if split in names:
            return names
    return (split,)


def decode_text(data: bytes, where: Path) -> str:
    """UTF-8 (a byte-order mark is dropped), else Windows-1252 / latin-1 (never fails)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")


def read_bytes(path: Path) -> bytes:
    """A file's bytes, or a BenchmarkError."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BenchmarkError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def read_json(path: Path) -> Any:
    """One JSON document (BOM and non-UTF-8 encodings tolerated)."""
    try:
        return json.loads(decode_text(read_bytes(path), path))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-empty line."""
    rows = []
    for n, line in enumerate(decode_text(read_bytes(path), path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path} line {n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise BenchmarkError(f"{path} line {n}: expected a JSON object")
        rows.append(row)
    return rows


def read_csv(path: Path) -> list[dict[str, str]]:
    """CSV rows as dicts with stripped header names (UTF-8 with or without BOM, else cp1252/latin-1)."""
    text = decode_text(read_bytes(path), path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return [{(k or "").strip().lstrip("\ufeff"): (v or "") for k, v in r.items() if k} for r in reader]
    except csv.Error as exc:
        raise BenchmarkError(f"{path}: not a readable CSV ({exc})") from exc


def read_pickle(path: Path) -> Any:
    """Unpickle a published annotation file (only point this at files you trust)."""
    data = read_bytes(path)
    if data[:1] != b"\x80":
        raise BenchmarkError(f"{path}: not a pickle file")
    try:
        return pickle.loads(data)  # noqa: S301 — the published format of a local file the user names
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
        raise BenchmarkError(f"{path}: cannot read the pickle ({exc})") from exc


def read_parquet(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a parquet file (only `columns`; each must exist)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BenchmarkError("reading parquet needs pyarrow: pip install pyarrow") from exc
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"{path}: not a readable parquet file ({exc})") from exc
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise BenchmarkError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(schema.names)}")
    return pq.read_table(path, columns=list(columns)).to_pylist()


def parquet_files(path: Path, split: str) -> list[Path]:
    """A parquet file, or a folder's `{split}-*.parquet` files at the top, in `data/` or one folder down (HF)."""
    if path.is_file():
        return [path]
    folders = [
        path,
        path / "data",
        *sorted(d for d in path.glob("*/") if d.is_dir()),
    ]  # HF: data/ or <config>/
    for name in split_names(split):
        for d in folders:
            files = sorted(d.glob(f"{name}-*.parquet")) + sorted(d.glob(f"{name}.parquet"))
            if files:
                return files
    found = sorted(
        {p.name.split("-")[0].removesuffix(".parquet") for d in folders for p in d.glob("*.parquet")}
    )
    raise BenchmarkError(
        f"{path}: no {split}-*.parquet files" + (f" (splits here: {', '.join(found)})" if found else "")
    )


def need(row: dict, fields: tuple[str, ...], where: str) -> None:
    """Raise BenchmarkError naming the missing fields and those the row has."""
    missing = [f for f in fields if f not in row]
    if missing:
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(missing)}; has {', '.join(sorted(row))}")


def image_bytes(value: Any, where: str) -> bytes:
    """The encoded bytes of a Hugging Face `Image` cell ({bytes, path} struct, or raw bytes)."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray) or not data:
        raise BenchmarkError(f"{where}: image has no bytes")
    return bytes(data)
