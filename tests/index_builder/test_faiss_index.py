"""FAISS patch index: self-retrieval, metadata, save/load, shard merge, corpus build."""

from __future__ import annotations

import numpy as np
import pytest

from index_builder.faiss_index import (
    IndexBuilder,
    IndexError_,
    PatchIndex,
    default_factory,
    merge_indexes,
)
from index_builder.index_build import build_patch_index
from index_builder.samples import load_image, read_corpus


def _grids(n: int, g: int = 4, d: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, g, g, d)).astype(np.float32)


def _build(factory: str, grids: np.ndarray, train: np.ndarray | None = None) -> PatchIndex:
    b = IndexBuilder(factory, grids.shape[-1], grids.shape[1])
    if b.needs_training:
        b.train(train if train is not None else grids.reshape(-1, grids.shape[-1]))
    b.add_grids([f"img{i}" for i in range(len(grids))], grids)
    return b.finish(nprobe=8)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_vector_finds_itself_first(factory):
    grids = _grids(40)
    index = _build(factory, grids)
    hits = index.search(grids[[7, 31], [2, 0], [3, 1]], k=3)
    assert hits[0][0][:3] == ("img7", 2, 3) and abs(hits[0][0].score - 1.0) < 1e-4
    assert hits[1][0][:3] == ("img31", 0, 1)


def test_ivfpq_finds_itself_in_top_k():
    grids = _grids(80, d=32)
    train = _grids(40, d=32, seed=1).reshape(-1, 32)  # 640 >= 39 * 16 vectors for 4-bit PQ codebooks
    index = _build("IVF4,PQ8x4,RFlat", grids, train)
    hits = index.search(grids[10, 1, 2], k=5)[0]
    assert hits[0][:3] == ("img10", 1, 2)


def test_metadata_integrity():
    grids = _grids(5, g=3)
    index = _build("Flat", grids)
    assert len(index) == 5 * 9 and index.img.dtype == np.int32 and index.row.dtype == np.uint16
    assert index.image_ids == [f"img{i}" for i in range(5)]
    flat = grids.reshape(-1, 32)
    for vid in (0, 13, 44):
        i, r, c = index.img[vid], index.row[vid], index.col[vid]
        np.testing.assert_allclose(flat[vid], grids[i, r, c])


def test_save_load_round_trip(tmp_path):
    grids = _grids(30)
    index = _build("IVF8,Flat", grids)
    index.save(tmp_path / "idx")
    loaded = PatchIndex.load(tmp_path / "idx")
    q = grids[3].reshape(-1, 32)[:4]  # (4, D): one /explain query with K=4
    assert loaded.search(q, 5) == index.search(q, 5)
    assert loaded.factory == "IVF8,Flat" and loaded.nprobe == 8 and loaded.grid == 4
    assert not list((tmp_path / "idx").glob("*.tmp"))


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_merged_shards_equal_one_build(factory):
    grids = _grids(30)
    b = IndexBuilder(factory, 32, 4)
    if b.needs_training:
        b.train(grids.reshape(-1, 32))
    parts = []
    for lo, hi in ((0, 10), (10, 25), (25, 30)):
        b.add_grids([f"img{i}" for i in range(lo, hi)], grids[lo:hi])
        parts.append(b.finish(nprobe=8))
    b.add_grids([f"img{i}" for i in range(30)], grids)
    whole = b.finish(nprobe=8)
    merged = merge_indexes(parts, nprobe=8)
    q = grids[[2, 12, 28], 1, 1]
    assert merged.search(q, 4) == whole.search(q, 4)
    np.testing.assert_array_equal(merged.img, whole.img)


def test_errors():
    with pytest.raises(IndexError_, match="factory"):
        IndexBuilder("NotAnIndex", 8, 2)
    index = _build("Flat", _grids(2))
    with pytest.raises(IndexError_, match="dim"):
        index.search(np.ones((1, 7), np.float32))
    with pytest.raises(IndexError_, match="trained"):
        IndexBuilder("IVF4,Flat", 32, 4).add_grids(["a"], _grids(1))


def test_default_factory_by_size():
    assert default_factory(100_000, 1152) == "Flat"
    big = default_factory(63_000_000, 1152)
    assert big.startswith("IVF") and "PQ" in big


def test_build_from_corpus_with_shards(tiny_encoder, synthetic_manifest, tmp_path):
    folder = synthetic_manifest.parent / "images"
    refs = read_corpus(folder)
    one = build_patch_index(tiny_encoder, refs, tmp_path / "one", progress=False)
    sharded = build_patch_index(tiny_encoder, refs, tmp_path / "sh", shard_images=5, progress=False)
    assert len(one) == len(refs) * 256 and one.factory == "Flat"
    grid = tiny_encoder.encode([load_image(refs[4].image)])[0].numpy()  # (G, G, D)
    for index in (one, PatchIndex.load(tmp_path / "sh"), sharded):
        hit = index.search(grid[9, 11], k=1)[0][0]
        assert (hit.image_id, hit.row, hit.col) == (refs[4].id, 9, 11)
    # a re-run finds the finished shards and skips them
    mtime = (tmp_path / "sh" / "shards" / "shard-00000" / "index.faiss").stat().st_mtime_ns
    build_patch_index(tiny_encoder, refs, tmp_path / "sh", shard_images=5, progress=False)
    assert (tmp_path / "sh" / "shards" / "shard-00000" / "index.faiss").stat().st_mtime_ns == mtime


def test_ondisk_merge(tiny_encoder, synthetic_manifest, tmp_path):
    refs = read_corpus(synthetic_manifest)
    index = build_patch_index(
        tiny_encoder, refs, tmp_path / "od", factory="IVF16,Flat", shard_images=4, ondisk=True, progress=False
    )
    assert (tmp_path / "od" / "index.ivfdata").exists()
    loaded = PatchIndex.load(tmp_path / "od")
    loaded.set_nprobe(16)
    grid = tiny_encoder.encode([load_image(refs[9].image)])[0].numpy()
    hit = loaded.search(grid[3, 5], k=1)[0][0]
    assert (hit.image_id, hit.row, hit.col) == (refs[9].id, 3, 5)
    assert len(index) == len(loaded) == len(refs) * 256
