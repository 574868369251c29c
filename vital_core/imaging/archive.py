"""A zip of DICOM instances, read in memory with every size known before anything is inflated.

Zip-bomb safety, in order: the entry count is read from the end-of-central-directory record (ZIP64 too)
and checked against `max_instances` before `zipfile` parses the directory (a directory of millions of
entries would cost gigabytes of `ZipInfo` objects); then the declared uncompressed sizes are summed
against `max_series_bytes`; then each member is inflated, and `zipfile` stops at the declared size (a
member that inflates beyond it fails its CRC: 400). Nothing is written to disk. Directories, hidden files,
macOS `__MACOSX/` forks and `DICOMDIR` are skipped; encrypted members are refused (415).
"""

from __future__ import annotations

import io
import struct
import zipfile

from vital_core.imaging.spec import ImagingError, ImagingLimits

ZIP_MAGIC = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
MAX_SKIPPED = 64
"""Skipped entries (folders, hidden files, DICOMDIR) allowed beyond `max_instances`."""


def is_zip(head: bytes) -> bool:
    """A zip archive (local file header first)."""
    return bytes(head[:4]) == ZIP_MAGIC


def declared_entries(data: bytes | memoryview) -> int:
    """The entry count the end-of-central-directory record declares (ZIP64 aware); 400 when absent."""
    view = memoryview(data)
    tail = bytes(view[max(0, len(view) - (1 << 16) - 22) :])
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise ImagingError("unreadable", "not a complete zip archive (no end of central directory)")
    entries = struct.unpack_from("<H", tail, at + 10)[0]
    if entries != 0xFFFF:
        return entries
    loc = tail.rfind(_ZIP64_LOCATOR, 0, at)
    if loc < 0 or len(tail) - loc < 20:
        raise ImagingError("unreadable", "zip archive: ZIP64 locator missing")
    offset = struct.unpack_from("<Q", tail, loc + 8)[0]
    if offset + 56 > len(view) or bytes(view[offset : offset + 4]) != _ZIP64_EOCD:
        raise ImagingError("unreadable", "zip archive: ZIP64 end of central directory missing")
    return struct.unpack_from("<Q", bytes(view[offset : offset + 56]), 32)[0]


def _skipped(name: str) -> bool:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return (
        name.endswith("/")
        or base.startswith(".")
        or base.upper() == "DICOMDIR"
        or name.startswith("__MACOSX/")
        or "/__MACOSX/" in name
    )


def read_zip(data: bytes | memoryview, limits: ImagingLimits) -> list[tuple[str, bytes]]:
    """The members of a zip as (name, bytes), in archive order; 400/413/415 as ImagingError."""
    entries = declared_entries(data)
    if entries > limits.max_instances + MAX_SKIPPED:
        raise ImagingError(
            "too_large", f"the zip declares {entries} entries; the limit is {limits.max_instances} instances"
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not _skipped(i.filename)]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, struct.error) as exc:
        raise ImagingError("unreadable", f"unreadable zip archive: {exc}") from exc
    if not infos:
        raise ImagingError("unreadable", "the zip holds no files")
    if len(infos) > limits.max_instances:
        raise ImagingError(
            "too_large", f"the zip holds {len(infos)} files; the limit is {limits.max_instances} instances"
        )
    total = sum(i.file_size for i in infos)
    if total > limits.max_series_bytes:
        raise ImagingError(
            "too_large",
            f"the zip's files declare {total} bytes uncompressed; the limit is {limits.max_series_bytes}",
        )
    out = []
    for info in infos:
        if info.flag_bits & 0x1:
            raise ImagingError("unsupported", f"zip member {info.filename} is encrypted")
        try:
            with zf.open(info) as member:
                body = member.read(info.file_size + 1)  # zipfile stops at the declared size
        except NotImplementedError as exc:
            raise ImagingError("unsupported", f"zip member {info.filename}: {exc}") from exc
        except Exception as exc:  # BadZipFile (CRC, bad header), zlib.error, EOFError
            raise ImagingError("unreadable", f"zip member {info.filename} is corrupt: {exc}") from exc
        if len(body) != info.file_size:
            raise ImagingError("unreadable", f"zip member {info.filename} does not match its declared size")
        out.append((info.filename, body))
    return out


__all__ = ["declared_entries", "is_zip", "read_zip"]
