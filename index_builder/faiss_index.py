"""FAISS index over the patch features of a reference corpus (nearest reference patches for /explain).

Vectors are L2-normalised and searched by inner product, i.e. cosine. Vector id i is the i-th patch
added; metadata maps it to (image id, row, col) with three numpy arrays and one image-id list (no JSON
object per vector). Saved layout of an index directory:

    index.faiss   the FAISS index (or index.faiss + index.ivfdata for an on-disk merged IVF)
    meta.npz      img (int32 [N], position in image_ids), row, col (uint16 [N])
    index.json    factory, dim, grid, count, nprobe, image_ids

A two-stage index (version 2, docs/index.md) adds an on-disk vector store (vectors.f16 + vectors.json,
see vector_store.py) that re-ranks the resident index's `k_candidates` candidates exactly; its metadata
is meta-img.npy, meta-row.npy, meta-col.npy, memory-mapped on load, so only the compressed FAISS index
is resident. index.json then also holds k_candidates, the auto-tuning record and the byte counts.

Large corpora are built in shards that share one trained (empty) index and are merged at the end:
`merge_from` in memory, or `faiss.contrib.ondisk.merge_ondisk` for an IVF index larger than RAM.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from index_builder.vector_store import StoreWriter, VectorStore, VectorStoreError, copy_store, rerank

log = logging.getLogger(__name__)

FLAT_MAX_BYTES = 2 * 1024**3
"""Corpora whose float32 vectors fit in this many bytes get an exact `Flat` index."""
DEFAULT_NPROBE = 32
"""Inverted lists visited per query for IVF indexes (see docs/index_builder.md for the recall/time curve)."""
DEFAULT_CANDIDATES = 256
"""Candidates re-ranked per query by a two-stage index that was not auto-tuned."""
RESIDENT_FRACTION = 1 / 16
"""Resident-memory budget of a two-stage index as a fraction of flat float32 bytes (docs/index.md)."""


class IndexError_(RuntimeError):
    """An index that cannot be built, loaded or searched as asked; the message says why."""


class PatchHit(NamedTuple):
    """One nearest reference patch."""

    image_id: str
    row: int
    col: int
    score: float


def default_factory(n_vectors: int, dim: int) -> str:
    """Index-factory string for a corpus size: exact Flat while it fits FLAT_MAX_BYTES, else IVF-PQ.

    Above the threshold the index is two-stage (docs/index.md): IVF with ~4*sqrt(N) lists (power of
    two, 1024..65536; an HNSW coarse quantizer from 8192 lists) and 4-bit fast-scan PQ with D/4
    sub-quantizers (codes = 1/32 of flat, + 8-byte ids: 152 B/vector at D = 1152, inside the 1/16
    budget); candidates are re-ranked exactly from the on-disk store. Below D = 256 (tiny encoders)
    8-bit PQ with D/8 sub-quantizers (same bytes; fast-scan's 8-bit look-up tables lose too much there).
    """
    if n_vectors * dim * 4 <= FLAT_MAX_BYTES:
        return "Flat"
    nlist = int(min(65536, max(1024, 2 ** round(math.log2(4 * math.sqrt(n_vectors))))))
    ivf = f"IVF{nlist}_HNSW32" if nlist >= 8192 else f"IVF{nlist}"
    if dim >= 256:
        return f"{ivf},PQ{pq_m(dim, dim // 4)}x4fs"
    return f"{ivf},PQ{pq_m(dim, max(1, dim // 8))}x8"


def is_lossy(factory: str) -> bool:
    """Whether a factory's codes are approximate (then a two-stage index re-ranks from a vector store)."""
    if "RFlat" in factory or "Refine" in factory:
        return False
    return re.search(r"PQ|SQ|RaBitQ|LSH|PCA|ITQ|RQ|LSQ", factory) is not None


def pq_m(dim: int, target: int) -> int:
    """Largest divisor of dim not above target (PQ needs dim % M == 0)."""
    return max(m for m in range(1, max(1, target) + 1) if dim % m == 0)


def _normalized(x: np.ndarray) -> np.ndarray:
    """float32 C-contiguous copy with unit rows."""
    x = np.array(x, dtype=np.float32, copy=True, order="C")  # (N, D)
    if x.ndim != 2:
        raise IndexError_(f"vectors must be [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise IndexError_("vectors contain NaN or infinite values")
    faiss.normalize_L2(x)
    return x


def set_search_params(index: faiss.Index, nprobe: int, k_factor: float | None = None) -> None:
    """Set nprobe (and the re-ranking k_factor) wherever they exist in a possibly wrapped index."""
    space = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    if faiss.try_extract_index_ivf(index) is not None:
        space.set_index_parameter(index, "nprobe", nprobe)
    if k_factor is not None and "Refine" in type(index).__name__:
        space.set_index_parameter(index, "k_factor", k_factor)


def _no_polysemous(index: faiss.Index) -> None:
    """Switch off IVFPQ polysemous training: unused by our searches and ~3 min at D=1152 on 2 cores."""
    for part in (index, getattr(index, "base_index", None)):
        ivf = faiss.try_extract_index_ivf(part) if part is not None else None
        if ivf is not None and hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):
            faiss.downcast_index(ivf).do_polysemous_training = False


def _is_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__


def gpu_available() -> bool:
    """True when faiss-gpu is installed and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Move an index to all visible GPUs; unchanged (with a log line) when unsupported or no GPU."""
    if not gpu_available():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:  # e.g. Refine/OPQ parts without a GPU implementation
        log.warning("index stays on CPU (%s)", exc)
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    """GPU index -> CPU index (identity for CPU indexes)."""
    return faiss.index_gpu_to_cpu(index) if _is_gpu(index) else index


@dataclass
class PatchIndex:
    """A FAISS inner-product index plus the (image id, row, col) of every vector."""

    index: faiss.Index
    image_ids: list[str]
    img: np.ndarray
    """int32 [N]: position in image_ids of each vector."""
    row: np.ndarray
    """uint16 [N]."""
    col: np.ndarray
    """uint16 [N]."""
    factory: str
    grid: int
    nprobe: int = DEFAULT_NPROBE
    store: VectorStore | None = None
    """On-disk vectors that re-rank the candidates (two-stage search); None = one-stage."""
    k_candidates: int = 0
    """Candidates fetched from the resident index per query before exact re-ranking (0 = no re-ranking)."""
    tuning: dict | None = None
    """The auto-tuning record (autotune.TuneResult.to_dict()) that chose nprobe and k_candidates."""

    def __post_init__(self) -> None:
        if not len(self.img) == len(self.row) == len(self.col) == self.index.ntotal:
            raise IndexError_(
                f"metadata has {len(self.img)} rows but the index holds {self.index.ntotal} vectors"
            )
        if self.store is not None and (len(self.store) != self.index.ntotal or self.store.dim != self.dim):
            raise IndexError_(
                f"vector store holds {len(self.store)} x {self.store.dim} but the index "
                f"{self.index.ntotal} x {self.dim}"
            )
        set_search_params(self.index, self.nprobe)

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return self.index.d

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_nprobe(self, nprobe: int) -> None:
        """Change how many inverted lists a search visits (IVF indexes; ignored by Flat)."""
        self.nprobe = nprobe
        set_search_params(self.index, nprobe)

    def search_arrays(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: queries [N, D] -> (scores [N, k], ids [N, k]); id -1 where fewer than k exist."""
        q = _normalized(np.atleast_2d(queries))  # (N, D)
        if q.shape[1] != self.dim:
            raise IndexError_(f"query dim {q.shape[1]} != index dim {self.dim}")
        if self.store is None or self.k_candidates <= 0:
            return self.index.search(q, k)
        _, cand = self.index.search(q, max(k, self.k_candidates))  # (N, C) resident stage
        return rerank(q, cand, self.store, k)  # (N, k) exact scores from the store

    def resident_bytes(self) -> int:
        """Bytes the searchable index keeps in memory: the FAISS index (codes, ids, quantizers).

        Metadata and the vector store of a two-stage index are memory-mapped and not counted; for a
        one-stage index the metadata arrays (8 bytes per vector) are added.
        """
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and isinstance(ivf.invlists, faiss.OnDiskInvertedLists):
            raise IndexError_("resident size of an on-disk IVF is not defined")
        n = int(faiss.serialize_index(to_cpu(self.index)).size)
        return n if self.store is not None else n + len(self) * 8

    def disk_bytes(self) -> int:
        """Bytes of the re-ranking store on disk (0 for a one-stage index)."""
        return self.store.nbytes if self.store is not None else 0

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[PatchHit]]:
        """Queries [N, D] (or [D]) -> per query the top-k reference patches (image id, row, col, cosine)."""
        scores, ids = self.search_arrays(queries, k)  # (N, k) each
        return [
            [
                PatchHit(self.image_ids[self.img[i]], int(self.row[i]), int(self.col[i]), float(s))
                for s, i in zip(srow, irow, strict=True)
                if i >= 0
            ]
            for srow, irow in zip(scores, ids, strict=True)
        ]

    def save(self, out_dir: str | Path) -> Path:
        """Write index.faiss, meta.npz and index.json into out_dir (each written atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cpu = to_cpu(self.index)
        tmp = out / "index.faiss.tmp"
        faiss.write_index(cpu, str(tmp))
        os.replace(tmp, out / "index.faiss")
        extra: dict = {}
        if self.store is None:
            with open(out / "meta.npz.tmp", "wb") as fh:
                np.savez(fh, img=self.img, row=self.row, col=self.col)
            os.replace(out / "meta.npz.tmp", out / "meta.npz")
        else:
            for name, arr in (("img", self.img), ("row", self.row), ("col", self.col)):
                with open(out / f"meta-{name}.npy.tmp", "wb") as fh:
                    np.save(fh, np.asarray(arr))
                os.replace(out / f"meta-{name}.npy.tmp", out / f"meta-{name}.npy")
            (out / "meta.npz").unlink(missing_ok=True)  # a stale one-stage file would shadow the new meta
            self.store = copy_store(self.store, out)
            extra = {
                "store": self.store.dtype_name,
                "k_candidates": self.k_candidates,
                "tuning": self.tuning,
                "bytes": {"flat": len(self) * self.dim * 4, "disk": self.disk_bytes()},
            }
        info = {
            "version": 1 if self.store is None else 2,
            "factory": self.factory,
            "metric": "inner_product",
            "dim": self.dim,
            "grid": self.grid,
            "count": len(self),
            "nprobe": self.nprobe,
            **extra,
            "image_ids": self.image_ids,
        }
        (out / "index.json.tmp").write_text(json.dumps(info))
        os.replace(out / "index.json.tmp", out / "index.json")
        return out

    @classmethod
    def load(cls, path: str | Path, gpu: bool = False, mmap: bool = False) -> PatchIndex:
        """Read an index directory written by `save` (optionally onto GPU, or memory-mapped).

        Version-1 directories (one stage, meta.npz) and version-2 ones (two stage, vector store and
        memory-mapped metadata) both load; the saved nprobe and k_candidates are applied.
        """
        path = Path(path)
        try:
            info = json.loads((path / "index.json").read_text())
            if (path / "meta.npz").is_file():
                meta = dict(np.load(path / "meta.npz"))
            else:
                meta = {n: np.load(path / f"meta-{n}.npy", mmap_mode="r") for n in ("img", "row", "col")}
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            index = faiss.read_index(str(path / "index.faiss"), flags)
            store = VectorStore(path) if info.get("store") else None
        except (OSError, ValueError, KeyError, RuntimeError, VectorStoreError) as exc:
            raise IndexError_(f"cannot load patch index from {path}: {exc}") from exc
        if gpu:
            index = to_gpu(index)
        return cls(
            index=index,
            image_ids=list(info["image_ids"]),
            img=meta["img"],
            row=meta["row"],
            col=meta["col"],
            factory=info["factory"],
            grid=int(info["grid"]),
            nprobe=int(info.get("nprobe", DEFAULT_NPROBE)),
            store=store,
            k_candidates=int(info.get("k_candidates", 0)) if store is not None else 0,
            tuning=info.get("tuning"),
        )


class IndexBuilder:
    """Trains one empty index, then adds patch grids image by image; can spill shards and merge them."""

    def __init__(
        self,
        factory: str,
        dim: int,
        grid: int,
        use_gpu: bool = False,
        id_offset: int | None = None,
        store_dir: str | Path | None = None,
        store_dtype: str = "float16",
    ) -> None:
        try:
            self.trained = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexError_(f"bad index factory string {factory!r}: {exc}") from exc
        _no_polysemous(self.trained)
        self.factory, self.dim, self.grid = factory, dim, grid
        self.use_gpu = use_gpu and gpu_available()
        self.id_offset = id_offset
        """When set, vectors get explicit global ids id_offset + i (IVF shards merged on disk)."""
        self.store_dir = Path(store_dir) if store_dir is not None else None
        """When set, every added vector is also written to a re-ranking store there (two-stage)."""
        self.store_dtype = store_dtype
        self._reset()

    @property
    def needs_training(self) -> bool:
        """Whether `train` must be called before adding."""
        return not self.trained.is_trained

    def train_size(self) -> int:
        """A good number of training vectors for this factory (k-means wants ~40 per centroid)."""
        ivf = faiss.try_extract_index_ivf(self.trained)
        nlist = ivf.nlist if ivf is not None else 0
        return int(max(256 * 64, 40 * nlist))

    def train(self, sample: np.ndarray) -> None:
        """Train quantizers on a sample [n, D] of (any-norm) patch vectors."""
        x = _normalized(sample)  # (n, D)
        index = to_gpu(self.trained) if self.use_gpu else self.trained
        index.train(x)
        self.trained = to_cpu(index)
        self._reset()

    def _reset(self) -> None:
        index = faiss.clone_index(self.trained)
        self.index = to_gpu(index) if self.use_gpu else index
        self.image_ids: list[str] = []
        self.img: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self._writer: StoreWriter | None = None

    def _store_writer(self) -> StoreWriter | None:
        if self.store_dir is not None and self._writer is None:
            try:
                self._writer = StoreWriter(self.store_dir, self.dim, self.store_dtype)
            except VectorStoreError as exc:
                raise IndexError_(str(exc)) from exc
        return self._writer

    def add_grids(self, image_ids: Sequence[str], grids: np.ndarray) -> None:
        """Add the patch grids [B, G, G, D] of B images (every patch becomes one vector)."""
        b, g, g2, d = grids.shape
        if (g, g2, d) != (self.grid, self.grid, self.dim):
            raise IndexError_(
                f"grids {grids.shape[1:]} do not match index ({self.grid}, {self.grid}, {self.dim})"
            )
        if self.needs_training:
            raise IndexError_(f"index {self.factory!r} must be trained before adding")
        x = _normalized(grids.reshape(b * g * g, d))  # (B*G*G, D)
        writer = self._store_writer()
        if writer is not None:
            writer.append(x)
        if self.id_offset is None:
            self.index.add(x)
        else:
            start = self.id_offset + self.index.ntotal
            self.index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
        first = len(self.image_ids)
        self.image_ids.extend(image_ids)
        rr, cc = np.meshgrid(np.arange(g, dtype=np.uint16), np.arange(g, dtype=np.uint16), indexing="ij")
        self.img.append(np.repeat(np.arange(first, first + b, dtype=np.int32), g * g))  # (B*G*G,)
        self.rows.append(np.tile(rr.ravel(), b))  # (B*G*G,)
        self.cols.append(np.tile(cc.ravel(), b))  # (B*G*G,)

    def finish(self, nprobe: int = DEFAULT_NPROBE, k_candidates: int = DEFAULT_CANDIDATES) -> PatchIndex:
        """The built index with its metadata; the builder starts a fresh (trained, empty) index."""
        cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
        writer = self._store_writer()
        store = writer.close() if writer is not None else None
        out = PatchIndex(
            index=to_cpu(self.index),
            image_ids=list(self.image_ids),
            img=cat(self.img, np.int32),
            row=cat(self.rows, np.uint16),
            col=cat(self.cols, np.uint16),
            factory=self.factory,
            grid=self.grid,
            nprobe=nprobe,
            store=store,
            k_candidates=k_candidates if store is not None else 0,
        )
        self._reset()
        return out


def _merge_into(base: faiss.Index, other: faiss.Index) -> None:
    """Append other's vectors to base; ids of other shift by base.ntotal (sequential ids throughout)."""
    if hasattr(base, "refine_index"):  # IndexRefine(Flat): merge the coarse and the re-ranking parts
        b_base, b_ref = faiss.downcast_index(base.base_index), faiss.downcast_index(base.refine_index)
        _merge_into(b_base, faiss.downcast_index(other.base_index))
        _merge_into(b_ref, faiss.downcast_index(other.refine_index))
        base.ntotal = b_base.ntotal
    elif faiss.try_extract_index_ivf(base) is not None:
        base.merge_from(other, base.ntotal)
    else:  # flat-code indexes number their vectors implicitly
        base.merge_from(other, 0)


def _merged_store(parts: Sequence[PatchIndex], store_dir: Path | None) -> VectorStore | None:
    """The shards' vector stores concatenated into store_dir (None for one-stage shards)."""
    from index_builder.vector_store import concat_stores

    if all(p.store is None for p in parts):
        return None
    if store_dir is None or any(p.store is None for p in parts):
        raise IndexError_("two-stage shards need a store_dir to merge into, and every shard a store")
    try:
        return concat_stores([p.store for p in parts], store_dir)
    except VectorStoreError as exc:
        raise IndexError_(str(exc)) from exc


def merge_indexes(
    parts: Sequence[PatchIndex], nprobe: int = DEFAULT_NPROBE, store_dir: Path | None = None
) -> PatchIndex:
    """Merge shard indexes built from one trained index (same factory) into one, ids in shard order.

    Two-stage shards also have their vector stores concatenated into store_dir.
    """
    if not parts:
        raise IndexError_("nothing to merge")
    base = faiss.clone_index(parts[0].index)
    image_ids, img, rows, cols = list(parts[0].image_ids), [parts[0].img], [parts[0].row], [parts[0].col]
    for part in parts[1:]:
        if part.factory != parts[0].factory or part.dim != parts[0].dim:
            raise IndexError_("shards were built with different factories or dims")
        try:
            _merge_into(base, part.index)
        except RuntimeError as exc:
            raise IndexError_(f"index type {parts[0].factory!r} cannot be merged in memory: {exc}") from exc
        img.append(part.img + len(image_ids))
        image_ids.extend(part.image_ids)
        rows.append(part.row)
        cols.append(part.col)
    return PatchIndex(
        base,
        image_ids,
        np.concatenate(img).astype(np.int32),
        np.concatenate(rows),
        np.concatenate(cols),
        parts[0].factory,
        parts[0].grid,
        nprobe,
        store=_merged_store(parts, store_dir),
        k_candidates=parts[0].k_candidates,
    )


def merge_shards_ondisk(
    trained: faiss.Index, shard_dirs: Sequence[Path], out_dir: Path, nprobe: int
) -> PatchIndex:
    """Merge IVF shard directories into one index whose inverted lists live in out_dir/index.ivfdata."""
    from faiss.contrib.ondisk import merge_ondisk

    if faiss.try_extract_index_ivf(trained) is None or "Refine" in type(trained).__name__:
        raise IndexError_("on-disk merge needs a plain IVF index (no Refine wrapper)")
    parts = [PatchIndex.load(d) for d in shard_dirs]
    out_dir.mkdir(parents=True, exist_ok=True)
    index = faiss.clone_index(trained)
    merge_ondisk(index, [str(d / "index.faiss") for d in shard_dirs], str(out_dir / "index.ivfdata"))
    image_ids, img = [], []
    for p in parts:
        img.append(p.img + len(image_ids))
        image_ids.extend(p.image_ids)
    return PatchIndex(
        index,
        image_ids,
        np.concatenate(img).astype(np.int32),
        np.concatenate([p.row for p in parts]),
        np.concatenate([p.col for p in parts]),
        parts[0].factory,
        parts[0].grid,
        nprobe,
        store=_merged_store(parts, out_dir),
        k_candidates=parts[0].k_candidates,
    )
