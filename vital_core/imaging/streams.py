"""Forward-only byte streams with a cap: raw bytes, or a deflate/gzip stream inflated on demand.

Nothing is inflated before it is asked for, and never more than `cap` bytes in all: a gzip or deflate
bomb costs at most `cap` bytes of CPU work and a 1 MiB window of memory, then gets ImagingError(413).
"""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

from vital_core.imaging.spec import ImagingError

CHUNK = 1 << 20
HISTORY = 1 << 16
"""Bytes kept behind the read position so parsers may step back a little (pydicom rewinds ≤ 12 bytes)."""
MAX_READS = 400_000
"""Parser reads allowed on one file (pydicom reads about twice per element): a header of millions of tiny
elements would otherwise cost minutes of CPU; real headers take a few hundred."""


def _too_many_reads(what: str) -> ImagingError:
    return ImagingError("too_large", f"{what} has too many elements to parse (more than {MAX_READS // 2})")


class CountingBytesIO(io.BytesIO):
    """BytesIO that refuses to serve more than MAX_READS reads (a parse-time bound for untrusted headers)."""

    def __init__(self, data: bytes, what: str = "file"):
        super().__init__(data)
        self.what = what
        self.reads = 0

    def read(self, n: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_READS:
            raise _too_many_reads(self.what)
        return super().read(n)


class ByteStream(io.RawIOBase):
    """A readable file-like over produced chunks: forward seeks skip, short backward seeks use a history."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what
        self._buf = bytearray()  # history + unread bytes
        self._start = 0  # stream position of self._buf[0]
        self._pos = 0
        self.reads = 0

    # -- producers override this ------------------------------------------------------------------
    def _produce(self, n: int) -> bytes:
        """Up to n more bytes; b'' at the end."""
        raise NotImplementedError

    # -- io.RawIOBase -----------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _fill(self, end: int) -> None:
        """Produce until the buffer reaches stream position `end` (or the stream ends)."""
        while (have := self._start + len(self._buf)) < end:
            data = self._produce(min(CHUNK, max(end - have, 64 * 1024)))
            if not data:
                return
            self._buf += data

    def _trim(self) -> None:
        drop = self._pos - self._start - HISTORY
        if drop > CHUNK:
            del self._buf[:drop]
            self._start += drop

    def readinto(self, b) -> int:  # writable buffer
        """Copy up to len(b) bytes into b piece by piece (the buffer never holds more than ~2 chunks)."""
        self.reads += 1
        if self.reads > MAX_READS:
            raise _too_many_reads(self.what)
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            self._fill(self._pos + min(CHUNK, len(view) - done))
            off = self._pos - self._start
            piece = self._buf[off : off + len(view) - done]
            if not piece:
                break
            view[done : done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
            self._trim()
        return done

    def seek(self, offset: int, whence: int = 0) -> int:
        target = {0: offset, 1: self._pos + offset}.get(whence)
        if target is None:
            raise OSError(f"{self.what}: only forward streaming is supported")
        if target < self._start:
            raise OSError(f"{self.what}: cannot seek back to {target}")
        while (end := self._start + len(self._buf)) < target:  # skip forward chunk by chunk
            self._pos = end
            self._trim()
            self._fill(min(target, end + CHUNK))
            if self._start + len(self._buf) == end:
                break  # end of stream: the position stays at the end
        self._pos = min(target, self._start + len(self._buf))
        self._trim()
        return self._pos

    def read_exact(self, n: int) -> bytearray:
        """Exactly n bytes, or ImagingError(400) for a truncated stream."""
        data = bytearray(n)
        if self.readinto(data) != n:
            raise ImagingError("unreadable", f"{self.what} is truncated (wanted {n} bytes at {self._pos})")
        return data

    def skip_to(self, position: int) -> None:
        """Move forward to `position`; ImagingError(400) if the stream ends first."""
        if self.seek(position) != position:
            raise ImagingError("unreadable", f"{self.what} is truncated (ends before byte {position})")


class MemoryStream(ByteStream):
    """A ByteStream over bytes already in memory."""

    def __init__(self, data: bytes | memoryview, what: str = "file"):
        super().__init__(what)
        self._data = memoryview(data)
        self._off = 0

    def _produce(self, n: int) -> bytes:
        out = bytes(self._data[self._off : self._off + n])
        self._off += len(out)
        return out


class InflateStream(ByteStream):
    """Inflates `source` (zlib `wbits`: -15 raw deflate, 31 gzip) on demand, at most `cap` bytes in all."""

    def __init__(self, source: BinaryIO | bytes, wbits: int, cap: int, what: str):
        super().__init__(what)
        self._src = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        self._wbits = wbits
        self._d = zlib.decompressobj(wbits)
        self.cap = cap
        self.total = 0
        self.ended_cleanly = False  # the (last) compressed member reached its end marker

    def _produce(self, n: int) -> bytes:
        while True:
            if self._d.eof:
                self.ended_cleanly = True
                rest = self._d.unused_data
                if self._wbits > 15 and rest.strip(b"\x00"):  # concatenated gzip members
                    self._d = zlib.decompressobj(self._wbits)
                    self.ended_cleanly = False
                    data = rest
                else:
                    return b""
            else:
                data = self._d.unconsumed_tail or self._src.read(64 * 1024)
                if not data:
                    return b""  # truncated: readers notice the short read
            try:
                out = self._d.decompress(data, min(n, self.cap + 1 - self.total))
            except zlib.error as exc:
                raise ImagingError("unreadable", f"{self.what}: corrupt compressed data ({exc})") from exc
            self.total += len(out)
            if self.total > self.cap:
                raise ImagingError("too_large", f"{self.what} inflates beyond {self.cap} bytes")
            if out:
                return out


class FileStream(ByteStream):
    """A ByteStream over an open binary file (read in chunks, never whole)."""

    def __init__(self, fileobj: BinaryIO, what: str = "file"):
        super().__init__(what)
        self._f = fileobj

    def _produce(self, n: int) -> bytes:
        return self._f.read(n)


def open_stream(source: bytes | memoryview | BinaryIO, cap: int, what: str) -> ByteStream:
    """A stream over `source`, inflated (capped at `cap`) when it starts with the gzip magic."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if bytes(source[:2]) == b"\x1f\x8b":
            return InflateStream(bytes(source), 31, cap, f"gzip-compressed {what}")
        return MemoryStream(source, what)
    head = source.read(2)
    source.seek(-len(head), 1)
    if head == b"\x1f\x8b":
        return InflateStream(source, 31, cap, f"gzip-compressed {what}")
    return FileStream(source, what)
