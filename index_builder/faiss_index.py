"""FAISS index over the patch features of a reference corpus (nearest reference patches for /explain).

Vectors are L2-normalised and searched by inner product, i.e. cosine. Vector id i is the i-th patch
added; metadata maps it to (image id, row, col) with three numpy arrays and one image-id list (no JSON
object per vector). Saved layout of an index directory:

    index.faiss   the FAISS index (or index.faiss + index.ivfdata for an on-disk merged IVF)
    meta.npz      img (int32 [N], position in image_ids), row, col (uint16 [N])
    index.json    factory, dim, grid, count, nprobe, image_ids

Large corpora are built in shards that share one trained (empty) index and are merged at the end:
`merge_from` in memory, or `faiss.contrib.ondisk.merge_ondisk` for an IVF index larger than RAM.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

log = logging.getLogger(__name__)

FLAT_MAX_BYTES = 2 * 1024**3
"""Corpora whose float32 vectors fit in this many bytes get an exact `Flat` index."""
DEFAULT_NPROBE = 32
"""Inverted lists visited per query for IVF indexes (see docs/index_builder.md for the recall/time curve)."""


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

    Above the threshold: IVF with ~4*sqrt(N) lists (power of two, 1024..65536) and PQ with dim/4 8-bit
    sub-quantizers (codes = 1/16 of flat memory): the best recall per byte in bench/index_bench.py.
    """
    if n_vectors * dim * 4 <= FLAT_MAX_BYTES:
        return "Flat"
    nlist = int(min(65536, max(1024, 2 ** round(math.log2(4 * math.sqrt(n_vectors))))))
    return f"IVF{nlist},PQ{pq_m(dim, dim // 4)}x8"


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

    def __post_init__(self) -> None:
        if not len(self.img) == len(self.row) == len(self.col) == self.index.ntotal:
            raise IndexError_(
                f"metadata has {len(self.img)} rows but the index holds {self.index.ntotal} vectors"
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
        return self.index.search(q, k)

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
        with open(out / "meta.npz.tmp", "wb") as fh:
            np.savez(fh, img=self.img, row=self.row, col=self.col)
        os.replace(out / "meta.npz.tmp", out / "meta.npz")
        info = {
            "version": 1,
            "factory": self.factory,
            "metric": "inner_product",
            "dim": self.dim,
            "grid": self.grid,
            "count": len(self),
            "nprobe": self.nprobe,
            "image_ids": self.image_ids,
        }
        (out / "index.json.tmp").write_text(json.dumps(info))
        os.replace(out / "index.json.tmp", out / "index.json")
        return out

    @classmethod
    def load(cls, path: str | Path, gpu: bool = False, mmap: bool = False) -> PatchIndex:
        """Read an index directory written by `save` (optionally onto GPU, or memory-mapped)."""
        path = Path(path)
        try:
            info = json.loads((path / "index.json").read_text())
            meta = np.load(path / "meta.npz")
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            index = faiss.read_index(str(path / "index.faiss"), flags)
        except (OSError, ValueError, RuntimeError) as exc:
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
        )


class IndexBuilder:
    """Trains one empty index, then adds patch grids image by image; can spill shards and merge them."""

    def __init__(
        self, factory: str, dim: int, grid: int, use_gpu: bool = False, id_offset: int | None = None
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

    def finish(self, nprobe: int = DEFAULT_NPROBE) -> PatchIndex:
        """The built index with its metadata; the builder starts a fresh (trained, empty) index."""
        cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
        out = PatchIndex(
            index=to_cpu(self.index),
            image_ids=list(self.image_ids),
            img=cat(self.img, np.int32),
            row=cat(self.rows, np.uint16),
            col=cat(self.cols, np.uint16),
            factory=self.factory,
            grid=self.grid,
            nprobe=nprobe,
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


def merge_indexes(parts: Sequence[PatchIndex], nprobe: int = DEFAULT_NPROBE) -> PatchIndex:
    """Merge shard indexes built from one trained index (same factory) into one, ids in shard order."""
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
    )


def _encode_refs(encoder, refs, batch_size: int):  # noqa: ANN001, ANN202
    """Yield (ids, grids [b, G, G, D] numpy) for consecutive batches of SampleRefs."""
    from index_builder.samples import load_image

    for start in range(0, len(refs), batch_size):
        chunk = refs[start : start + batch_size]
        grids = encoder.encode([load_image(r.image) for r in chunk]).numpy()  # (b, G, G, D)
        yield [r.id for r in chunk], grids


def build_patch_index(
    encoder,  # noqa: ANN001 - a PatchEncoderLike
    refs: Sequence,
    out_dir: str | Path,
    factory: str | None = None,
    nprobe: int = DEFAULT_NPROBE,
    batch_size: int = 16,
    shard_images: int | None = None,
    ondisk: bool = False,
    use_gpu: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> PatchIndex:
    """Encode every image of a corpus (SampleRefs) and index all its patches; save to out_dir.

    With `shard_images`, shards of that many images are built from one shared trained index, saved under
    out_dir/shards (finished shards are skipped on a re-run) and merged in memory, or on disk (`ondisk`).
    """
    from tqdm import tqdm

    if not refs:
        raise IndexError_("the corpus is empty")
    out, g, d = Path(out_dir), encoder.grid, encoder.hidden_size
    factory = factory or default_factory(len(refs) * g * g, d)
    builder = IndexBuilder(factory, d, g, use_gpu=use_gpu)
    trained_path = out / "shards" / "trained.faiss"
    if builder.needs_training and shard_images and trained_path.exists():
        builder.trained = faiss.read_index(str(trained_path))  # resume: the shards' shared quantizer
        builder._reset()
    if builder.needs_training:
        n_train = min(len(refs), math.ceil(builder.train_size() / (g * g)))
        pick = np.sort(np.random.default_rng(seed).choice(len(refs), n_train, replace=False))
        sample = np.concatenate(
            [grids.reshape(-1, d) for _, grids in _encode_refs(encoder, [refs[i] for i in pick], batch_size)]
        )
        log.info("training %s on %d vectors from %d images", factory, len(sample), n_train)
        builder.train(sample)
    bar = tqdm(total=len(refs), desc="index", unit="img", disable=not progress)
    if not shard_images:
        for ids, grids in _encode_refs(encoder, refs, batch_size):
            builder.add_grids(ids, grids)
            bar.update(len(ids))
        bar.close()
        index = builder.finish(nprobe)
        index.save(out)
        return index
    shard_dirs = []
    if builder.trained.is_trained and not trained_path.exists():
        trained_path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(builder.trained, str(trained_path) + ".tmp")
        os.replace(str(trained_path) + ".tmp", trained_path)
    for s, start in enumerate(range(0, len(refs), shard_images)):
        chunk = refs[start : start + shard_images]
        sdir = out / "shards" / f"shard-{s:05d}"
        shard_dirs.append(sdir)
        if (sdir / "index.json").exists() and json.loads((sdir / "index.json").read_text())["image_ids"] == [
            r.id for r in chunk
        ]:
            bar.update(len(chunk))
            continue  # finished on an earlier run
        builder.id_offset = start * g * g if ondisk else None
        for ids, grids in _encode_refs(encoder, chunk, batch_size):
            builder.add_grids(ids, grids)
            bar.update(len(ids))
        builder.finish(nprobe).save(sdir)
    bar.close()
    if ondisk:
        index = merge_shards_ondisk(builder.trained, shard_dirs, out, nprobe)
    else:
        index = merge_indexes([PatchIndex.load(p) for p in shard_dirs], nprobe)
    index.save(out)
    return index
