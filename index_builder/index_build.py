"""`build_patch_index`: encode a reference corpus and build its (one- or two-stage) patch index.

Small corpora get an exact `Flat` index. Lossy factories (IVF-PQ, OPQ, SQ, RaBitQ, ...) get the
two-stage layout: the compressed index stays resident and every vector is also written to an on-disk
store (vector_store.py) that re-ranks the candidates exactly; `nprobe` and the candidate count are then
auto-tuned on held-out queries for a target recall (autotune.py) and saved with the index.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from index_builder.faiss_index import (
    DEFAULT_CANDIDATES,
    DEFAULT_NPROBE,
    RESIDENT_FRACTION,
    IndexBuilder,
    IndexError_,
    PatchIndex,
    default_factory,
    is_lossy,
    merge_indexes,
    merge_shards_ondisk,
)

log = logging.getLogger(__name__)


def _encode_refs(encoder, refs, batch_size: int):
    """Yield (ids, grids [b, G, G, D] numpy) for consecutive batches of SampleRefs."""
    from index_builder.samples import load_image

    for start in range(0, len(refs), batch_size):
        chunk = refs[start : start + batch_size]
        grids = encoder.encode([load_image(r.image) for r in chunk]).numpy()  # (b, G, G, D)
        yield [r.id for r in chunk], grids


def tune_index(
    index: PatchIndex,
    target_recall: float = 0.95,
    queries: np.ndarray | int = 200,
    k: int = 10,
    seed: int = 0,
) -> None:
    """Auto-tune a two-stage index in place (queries: an array [Q, D], or how many block-mean queries)."""
    from index_builder.autotune import block_mean_queries, tune

    if index.store is None or len(index) == 0:
        return
    if isinstance(queries, int):
        queries = block_mean_queries(index.store, index.grid, queries, seed=seed + 1)
    res = tune(index, queries, target_recall=target_recall, k=min(k, len(index)))
    log.info(
        "auto-tune: nprobe=%d k_candidates=%d recall@%d=%.3f (target %.2f%s), %.1f ms per K=4 search",
        res.nprobe,
        res.k_candidates,
        res.k,
        res.recall,
        res.target,
        "" if res.reached else ", NOT reached",
        res.explain_ms,
    )


def check_budget(index: PatchIndex, fraction: float = RESIDENT_FRACTION) -> None:
    """Log a warning when a two-stage index keeps more than `fraction` of flat float32 bytes resident."""
    if index.store is None or not len(index):
        return
    ivf = faiss.try_extract_index_ivf(index.index)
    if ivf is not None and isinstance(ivf.invlists, faiss.OnDiskInvertedLists):
        return
    flat = len(index) * index.dim * 4
    resident = index.resident_bytes()
    if resident > fraction * flat:
        log.warning(
            "resident index is %.1f%% of flat float32 (budget %.1f%%): %s",
            100 * resident / flat,
            100 * fraction,
            index.factory,
        )


def build_patch_index(
    encoder,  # a PatchEncoderLike
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
    rerank: bool | None = None,
    store_dtype: str = "float16",
    target_recall: float | None = 0.95,
    tune_queries: np.ndarray | int = 200,
) -> PatchIndex:
    """Encode every image of a corpus (SampleRefs) and index all its patches; save to out_dir.

    With `shard_images`, shards of that many images are built from one shared trained index, saved under
    out_dir/shards (finished shards are skipped on a re-run) and merged in memory, or on disk (`ondisk`).
    `rerank` (default: when the factory is lossy) writes the on-disk vector store of a two-stage index;
    `target_recall` (None = no tuning, keep `nprobe` and DEFAULT_CANDIDATES) drives the auto-tuning.
    """
    from tqdm import tqdm

    if not refs:
        raise IndexError_("the corpus is empty")
    out, g, d = Path(out_dir), encoder.grid, encoder.hidden_size
    factory = factory or default_factory(len(refs) * g * g, d)
    two_stage = is_lossy(factory) if rerank is None else rerank
    builder = IndexBuilder(factory, d, g, use_gpu=use_gpu, store_dtype=store_dtype)
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
        builder.store_dir = out if two_stage else None
        for ids, grids in _encode_refs(encoder, refs, batch_size):
            builder.add_grids(ids, grids)
            bar.update(len(ids))
        bar.close()
        index = builder.finish(nprobe, DEFAULT_CANDIDATES)
    else:
        index = _build_shards(
            builder, encoder, refs, out, shard_images, ondisk, two_stage, nprobe, bar, batch_size
        )
    if index.store is not None and target_recall is not None:
        tune_index(index, target_recall, tune_queries, seed=seed)
    check_budget(index)
    index.save(out)
    return index


def _build_shards(  # noqa: PLR0913
    builder: IndexBuilder,
    encoder,
    refs: Sequence,
    out: Path,
    shard_images: int,
    ondisk: bool,
    two_stage: bool,
    nprobe: int,
    bar,
    batch_size: int,
) -> PatchIndex:
    """Build (or resume) the shards under out/shards and merge them."""
    g = builder.grid
    trained_path = out / "shards" / "trained.faiss"
    shard_dirs = []
    if builder.trained.is_trained and not trained_path.exists():
        trained_path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(builder.trained, str(trained_path) + ".tmp")
        os.replace(str(trained_path) + ".tmp", trained_path)
    for s, start in enumerate(range(0, len(refs), shard_images)):
        chunk = refs[start : start + shard_images]
        sdir = out / "shards" / f"shard-{s:05d}"
        shard_dirs.append(sdir)
        if (sdir / "index.json").exists():
            info = json.loads((sdir / "index.json").read_text())
            if info["image_ids"] == [r.id for r in chunk] and bool(info.get("store")) == two_stage:
                bar.update(len(chunk))
                continue  # finished on an earlier run
        builder.id_offset = start * g * g if ondisk else None
        builder.store_dir = sdir if two_stage else None
        for ids, grids in _encode_refs(encoder, chunk, batch_size):
            builder.add_grids(ids, grids)
            bar.update(len(ids))
        builder.finish(nprobe, DEFAULT_CANDIDATES).save(sdir)
    bar.close()
    if ondisk:
        return merge_shards_ondisk(builder.trained, shard_dirs, out, nprobe)
    return merge_indexes([PatchIndex.load(p) for p in shard_dirs], nprobe, store_dir=out)
