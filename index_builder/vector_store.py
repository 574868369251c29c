"""On-disk vector store for exact re-ranking: unit vectors [N, D] in one raw file read by numpy memmap.

The second stage of the two-stage patch index (see docs/index.md): the resident FAISS index returns a
candidate list per query, and `rerank` scores those candidates against the stored vectors (float16 or
float32) and keeps the top k. Only the candidates' rows are read, so the store can be far larger than
RAM; the OS page cache keeps hot rows. Files in an index directory:

    vectors.f16 (or vectors.f32)   raw little-endian rows, vector id i at byte offset i * D * itemsize
    vectors.json                   {"dtype", "dim", "count", "file"}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DTYPES = {"float16": ("f16", np.dtype("<f2")), "float32": ("f32", np.dtype("<f4"))}
"""Store dtype name -> (file suffix, numpy dtype)."""


class VectorStoreError(RuntimeError):
    """A vector store that is missing, torn or does not match its index."""


class VectorStore:
    """Read-only memory-mapped vectors [N, D]; `gather(ids)` reads only the rows asked for."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            info = json.loads((self.root / "vectors.json").read_text())
            self.dtype_name = str(info["dtype"])
            self.dim, self.count = int(info["dim"]), int(info["count"])
            self.path = self.root / info["file"]
            dtype = DTYPES[self.dtype_name][1]
            expected = self.count * self.dim * dtype.itemsize
            if self.path.stat().st_size != expected:
                raise VectorStoreError(
                    f"{self.path} has {self.path.stat().st_size} bytes, expected {expected}"
                )
            shape = (self.count, self.dim)
            self.vectors = np.memmap(self.path, dtype=dtype, mode="r", shape=shape) if self.count else None
        except (OSError, ValueError, KeyError) as exc:
            raise VectorStoreError(f"cannot open vector store in {self.root}: {exc}") from exc

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        """Bytes on disk (the vectors file)."""
        return self.count * self.dim * DTYPES[self.dtype_name][1].itemsize

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows [n, D] for sorted unique ids [n] (ascending ids keep the reads sequential)."""
        if self.vectors is None or len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return to_float32(self.vectors[ids])  # (n, D)

    def iter_chunks(self, chunk: int = 262_144):  # yields (start, float32 [m, D])
        """Consecutive float32 chunks of the whole store (for exact scans)."""
        for start in range(0, self.count, chunk):
            yield start, to_float32(self.vectors[start : start + chunk])


class StoreWriter:
    """Appends float32 unit vectors to a store file in the chosen dtype; `close` writes vectors.json."""

    def __init__(self, root: str | Path, dim: int, dtype: str = "float16") -> None:
        if dtype not in DTYPES:
            raise VectorStoreError(f"store dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.root, self.dim, self.dtype = Path(root), dim, dtype
        self.root.mkdir(parents=True, exist_ok=True)
        self.file = f"vectors.{DTYPES[dtype][0]}"
        self._tmp = self.root / f"{self.file}.tmp"
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        self.count = 0

    def append(self, x: np.ndarray) -> None:
        """Write rows [n, D] (already L2-normalised)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise VectorStoreError(f"store rows must be [n, {self.dim}], got {x.shape}")
        self._fh.write(np.ascontiguousarray(x, dtype=DTYPES[self.dtype][1]).tobytes())
        self.count += len(x)

    def close(self) -> VectorStore:
        """Move the file into place, write vectors.json and open the finished store."""
        self._fh.close()
        os.replace(self._tmp, self.root / self.file)
        _write_info(self.root, self.file, self.dtype, self.dim, self.count)
        return VectorStore(self.root)


def to_float32(rows: np.ndarray) -> np.ndarray:
    """float32 copy of store rows. float16 goes through torch's vectorised cast: numpy's float16 cast is a
    scalar loop, 2–6 ms for the 512 rows × 1152 of one K = 4 re-rank on this project's CPU, against
    0.5–0.7 ms (most of the re-rank's time before; bench/results/index_bench_explain.md)."""
    if rows.dtype != np.float16:
        return np.asarray(rows, dtype=np.float32)
    import torch

    if not rows.flags.writeable or not rows.flags.c_contiguous:  # e.g. a slice of the read-only memmap
        rows = np.array(rows, order="C")  # torch only wraps writable arrays
    return torch.from_numpy(rows).float().numpy()


def _write_info(root: Path, file: str, dtype: str, dim: int, count: int) -> None:
    info = {"dtype": dtype, "dim": dim, "count": count, "file": file}
    (root / "vectors.json.tmp").write_text(json.dumps(info))
    os.replace(root / "vectors.json.tmp", root / "vectors.json")


def copy_store(store: VectorStore, out_dir: str | Path) -> VectorStore:
    """The same store in out_dir (a copy; a no-op when it already lives there)."""
    out = Path(out_dir)
    if out.resolve() == store.root.resolve():
        return store
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store.path, out / f"{store.path.name}.tmp")
    os.replace(out / f"{store.path.name}.tmp", out / store.path.name)
    _write_info(out, store.path.name, store.dtype_name, store.dim, store.count)
    return VectorStore(out)


def concat_stores(parts: Sequence[VectorStore], out_dir: str | Path) -> VectorStore:
    """One store in out_dir holding the parts' rows in order (streamed, never all in memory)."""
    if not parts or any(p.dtype_name != parts[0].dtype_name or p.dim != parts[0].dim for p in parts):
        raise VectorStoreError("stores to concatenate must exist and share dtype and dim")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = parts[0].path.name
    with open(out / f"{name}.tmp", "wb") as dst:
        for p in parts:
            with open(p.path, "rb") as src:
                shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
    os.replace(out / f"{name}.tmp", out / name)
    _write_info(out, name, parts[0].dtype_name, parts[0].dim, sum(len(p) for p in parts))
    return VectorStore(out)


def rerank(
    queries: np.ndarray, candidates: np.ndarray, store: VectorStore, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among each query's candidates: queries [Q, D], candidate ids [Q, C] (-1 = none).

    All queries at once (the K steps of one /explain): one read of every distinct candidate row (ids
    ascending), then each query is scored against its own candidates only, so the result of each query
    is the one it gets alone (tests/index_builder/test_two_stage.py). Returns (scores [Q, k] float32,
    ids [Q, k] int64), best first; missing places get id -1 and the lowest float32 score, like FAISS.
    """
    q_n, c_n = candidates.shape
    valid = candidates >= 0  # (Q, C)
    uniq, inverse = np.unique(candidates[valid], return_inverse=True)  # (U,), (V,): V valid pairs
    vecs = store.gather(uniq)  # (U, D) float32, one read
    q = queries.astype(np.float32)  # (Q, D)
    cand_scores = np.full((q_n, c_n), np.finfo(np.float32).min, np.float32)  # (Q, C)
    ends = np.cumsum(valid.sum(1))  # candidates[valid] is row-major: query i owns inverse[ends[i-1]:ends[i]]
    for i, (start, end) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
        # einsum, not `@`: a multi-threaded BLAS call costs tens of ms on a busy machine for this tiny product
        cand_scores[i, valid[i]] = np.einsum("cd,d->c", vecs[inverse[start:end]], q[i])  # (c_i,)
    kk = min(k, c_n)
    top = (
        np.argpartition(-cand_scores, kk - 1, axis=1)[:, :kk]
        if kk < c_n
        else np.tile(np.arange(c_n), (q_n, 1))
    )
    order = np.take_along_axis(-cand_scores, top, 1).argsort(axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)  # (Q, kk) best first
    scores = np.take_along_axis(cand_scores, top, 1)
    ids = np.where(np.take_along_axis(valid, top, 1), np.take_along_axis(candidates, top, 1), -1)
    if kk < k:  # fewer candidates than k
        pad = k - kk
        scores = np.hstack([scores, np.full((q_n, pad), np.finfo(np.float32).min, np.float32)])
        ids = np.hstack([ids, np.full((q_n, pad), -1, np.int64)])
    return scores.astype(np.float32), ids.astype(np.int64)


def exact_topk(store: VectorStore, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k over the whole store (ground truth for auto-tuning): (scores, ids) [Q, k]."""
    q = queries.astype(np.float32)  # (Q, D)
    best_s = np.full((len(q), 0), 0, np.float32)
    best_i = np.full((len(q), 0), 0, np.int64)
    for start, chunk in store.iter_chunks():
        s = q @ chunk.T  # (Q, m)
        i = np.broadcast_to(np.arange(start, start + len(chunk)), s.shape)
        s, i = np.hstack([best_s, s]), np.hstack([best_i, i])  # (Q, k + m)
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = (-best_s).argsort(axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
