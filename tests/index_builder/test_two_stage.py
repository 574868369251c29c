"""Two-stage patch index: memmap store, exact re-ranking, auto-tuning, memory budget, old formats."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_builder.autotune import block_mean_queries, strict_recall, tune
from index_builder.faiss_index import IndexBuilder, IndexError_, PatchIndex, is_lossy
from index_builder.index_build import build_patch_index, check_budget
from index_builder.samples import load_image, read_corpus
from index_builder.vector_store import (
    StoreWriter,
    VectorStore,
    VectorStoreError,
    concat_stores,
    exact_topk,
    rerank,
    to_float32,
)

BUNDLE_INDEX = Path(__file__).resolve().parents[2] / "bundles" / "vital-tiny" / "index"
D, G = 64, 4


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Tiny indexes: one OpenMP thread avoids spin-waiting on a shared 2-core machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grids [500, G, G, D], tuning queries [100, D], eval queries [200, D]): 40 clusters, near neighbours."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, D)).astype(np.float32)
    owner = rng.integers(0, 40, 500 * G * G + 300)
    x = _unit(centres[owner] + 0.35 * rng.normal(size=(len(owner), D)).astype(np.float32))
    return x[: 500 * G * G].reshape(500, G, G, D), x[-300:-200], x[-200:]


@pytest.fixture(scope="module")
def built(clustered, tmp_path_factory):
    """A two-stage IVF16,PQ16x4 index over the clustered set (built once; tests may retune it)."""
    return _two_stage(clustered[0], tmp_path_factory.mktemp("two_stage"))


def _two_stage(grids: np.ndarray, root: Path, factory: str = "IVF16,PQ16x4", dtype: str = "float16"):
    b = IndexBuilder(factory, D, G, store_dir=root, store_dtype=dtype)
    b.train(grids.reshape(-1, D))
    b.add_grids([f"img{i}" for i in range(len(grids))], grids)
    return b.finish(nprobe=4, k_candidates=64)


def test_store_round_trip_and_errors(tmp_path):
    x = _unit(np.random.default_rng(1).normal(size=(50, 8)))
    for dtype, tol in (("float16", 1e-3), ("float32", 0.0)):
        w = StoreWriter(tmp_path / dtype, 8, dtype)
        w.append(x[:20])
        w.append(x[20:])
        store = w.close()
        assert isinstance(store.vectors, np.memmap) and len(store) == 50
        ids = np.array([3, 17, 49])
        np.testing.assert_allclose(store.gather(ids), x[ids], atol=tol)
        np.testing.assert_allclose(VectorStore(tmp_path / dtype).gather(ids), x[ids], atol=tol)
    assert (tmp_path / "float16" / "vectors.f16").stat().st_size == 50 * 8 * 2
    both = concat_stores(
        [VectorStore(tmp_path / "float32"), VectorStore(tmp_path / "float32")], tmp_path / "c"
    )
    np.testing.assert_array_equal(both.gather(np.array([2, 52])), x[[2, 2]])
    with open(tmp_path / "float32" / "vectors.f32", "ab") as fh:  # a torn / foreign file is refused
        fh.write(b"xx")
    with pytest.raises(VectorStoreError, match="expected"):
        VectorStore(tmp_path / "float32")
    with pytest.raises(VectorStoreError, match="dtype"):
        StoreWriter(tmp_path / "bad", 8, "int8")


def test_rerank_is_exact_over_its_candidates(tmp_path):
    x = _unit(np.random.default_rng(2).normal(size=(300, 16)))
    w = StoreWriter(tmp_path, 16, "float32")
    w.append(x)
    store = w.close()
    q = _unit(np.random.default_rng(3).normal(size=(5, 16)))
    all_ids = np.tile(np.arange(300), (5, 1))
    s, i = rerank(q, all_ids, store, 7)
    es, ei = exact_topk(store, q, 7)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, rtol=1e-5)
    np.testing.assert_array_equal(ei, np.argsort(-(q @ x.T), axis=1)[:, :7])
    cand = np.array([[5, -1, 9, -1]] * 5)  # fewer valid candidates than k: padded with -1
    _, pi = rerank(q, cand, store, 3)
    assert set(pi[0, :2]) == {5, 9} and pi[0, 2] == -1


def test_float16_rows_convert_exactly():
    """The fast float16 cast equals numpy's, bit for bit (subnormals, signed zero, inf and NaN included)."""
    rng = np.random.default_rng(4)
    rows = (rng.normal(size=(64, 48)) * 0.03).astype(np.float16)
    rows[0, :6] = [0.0, -0.0, 3e-7, -5e-5, np.inf, np.nan]  # 3e-7 and -5e-5 are float16 subnormals
    out = to_float32(rows)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out.view(np.uint32), rows.astype(np.float32).view(np.uint32))
    np.testing.assert_array_equal(to_float32(rows.astype(np.float32)), rows.astype(np.float32))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_rerank_scores_each_query_on_its_own_candidates(tmp_path, dtype):
    """K queries with overlapping candidate lists (and missing places): each gets the exact top-k of its
    own list, as when it is re-ranked alone."""
    x = _unit(np.random.default_rng(5).normal(size=(400, 32)))
    w = StoreWriter(tmp_path, 32, dtype)
    w.append(x)
    store = w.close()
    stored = store.gather(np.arange(400)).astype(np.float64)  # (400, 32) what the store holds
    q = _unit(np.random.default_rng(6).normal(size=(4, 32)))
    rng = np.random.default_rng(7)
    cand = np.stack([rng.choice(120, 40, replace=False) for _ in range(4)])  # overlapping lists
    cand[1, ::7] = -1
    cand[3] = cand[0]  # two steps with the same candidates
    scores, ids = rerank(q, cand, store, 10)
    for i in range(4):
        own = cand[i][cand[i] >= 0]
        exact = stored[own] @ q[i].astype(np.float64)  # (c_i,)
        order = np.argsort(-exact, kind="stable")[:10]
        np.testing.assert_array_equal(ids[i], own[order])
        np.testing.assert_allclose(scores[i], exact[order], rtol=1e-5, atol=1e-6)
        alone = rerank(q[i : i + 1], cand[i : i + 1], store, 10)
        np.testing.assert_array_equal(alone[1][0], ids[i])
        np.testing.assert_array_equal(alone[0][0], scores[i])


def test_batched_search_equals_per_query(clustered, built, tmp_path):
    """One /explain search of K queries returns, for every query, exactly what searching it alone does:
    two-stage (float16 store) and one-stage indexes, with repeated and near-identical steps."""
    grids, _, eq = clustered
    one_stage = IndexBuilder("IVF16,PQ16x4", D, G)
    one_stage.train(grids.reshape(-1, D))
    one_stage.add_grids([f"img{i}" for i in range(len(grids))], grids)
    near = _unit(eq[:1] + 0.01 * np.random.default_rng(8).normal(size=(1, D)))[0]
    steps = np.stack([eq[0], near, eq[5], eq[0], eq[9]])  # (K=5, D)
    for index in (built, one_stage.finish(nprobe=4)):
        scores, ids = index.search_arrays(steps, 10)
        for i, step in enumerate(steps):
            s1, i1 = index.search_arrays(step[None], 10)
            np.testing.assert_array_equal(i1[0], ids[i])
            np.testing.assert_array_equal(s1[0], scores[i])
        assert index.search(steps, 10) == [index.search(step, 10)[0] for step in steps]


def test_two_stage_recall_beats_one_stage_and_reaches_target(clustered, built):
    _, tq, eq = clustered
    index = built
    truth = exact_topk(index.store, eq, 10)[1]
    res = tune(index, tq, target_recall=0.95)
    assert res.reached and res.recall >= 0.95 and index.k_candidates == res.k_candidates
    _, ids = index.search_arrays(eq, 10)
    _, one = index.index.search(eq, 10)  # resident PQ alone
    two_stage, one_stage = strict_recall(ids, truth, 10), strict_recall(one, truth, 10)
    assert two_stage >= 0.93 and two_stage > one_stage + 0.1, (two_stage, one_stage)
    hits = index.search(eq[:2], k=3)
    assert len(hits) == 2 and hits[0][0].image_id.startswith("img") and hits[0][0].score >= hits[0][1].score


def test_resident_memory_budget(clustered, tmp_path, caplog):
    grids, _, _ = clustered
    index = _two_stage(grids, tmp_path / "ix", factory="IVF16,PQ8x4")  # 4 B codes + 8 B ids <= 16 B
    flat = len(index) * D * 4
    assert index.resident_bytes() <= flat / 16, index.resident_bytes() / flat
    assert index.disk_bytes() == len(index) * D * 2
    index.save(tmp_path / "saved")
    loaded = PatchIndex.load(tmp_path / "saved")
    assert isinstance(loaded.img, np.memmap) and isinstance(loaded.store.vectors, np.memmap)
    assert loaded.resident_bytes() == index.resident_bytes()
    big = _two_stage(grids[:200], tmp_path / "big", factory="IVF16,PQ32x4")  # 16 B codes + 8 B ids > 16 B
    with caplog.at_level(logging.WARNING):
        check_budget(big)
    assert "budget" in caplog.text


def test_autotune_saved_and_reloaded(clustered, tmp_path):
    grids, tq, eq = clustered
    index = _two_stage(grids[:200], tmp_path / "ix")
    res = tune(index, tq, target_recall=0.9)
    index.save(tmp_path / "ix")  # in place: the store is already there
    index.save(tmp_path / "copy")  # elsewhere: the store is copied
    info = json.loads((tmp_path / "copy" / "index.json").read_text())
    assert info["version"] == 2 and info["k_candidates"] == res.k_candidates and info["nprobe"] == res.nprobe
    assert info["tuning"]["target"] == 0.9 and info["tuning"]["table"]
    shutil.rmtree(tmp_path / "ix")
    loaded = PatchIndex.load(tmp_path / "copy")
    assert (loaded.nprobe, loaded.k_candidates) == (res.nprobe, res.k_candidates)
    assert loaded.tuning["recall"] == res.recall
    assert loaded.search(eq[:4], 5) == index.search(eq[:4], 5)  # K=4 /explain query


def test_block_mean_queries_are_unit_and_near_their_block(built):
    index = built
    q = block_mean_queries(index.store, G, 20, seed=0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    assert (exact_topk(index.store, q, 1)[0][:, 0] > 0.5).all()


def test_old_format_directories_load(tmp_path):
    if not (BUNDLE_INDEX / "index.faiss").is_file():
        pytest.skip("bundles/vital-tiny/index is not in this checkout")
    old = PatchIndex.load(BUNDLE_INDEX)
    assert old.store is None and old.k_candidates == 0 and old.factory == "Flat"
    q = faiss.rev_swig_ptr(faiss.downcast_index(old.index).get_xb(), old.index.ntotal * old.dim)
    v = np.array(q[7 * old.dim : 8 * old.dim], np.float32)  # vector id 7
    hit = old.search(v, k=1)[0][0]
    assert (old.image_ids.index(hit.image_id), hit.row, hit.col) == (old.img[7], old.row[7], old.col[7])
    info = json.loads((BUNDLE_INDEX / "index.json").read_text())
    assert "store" not in info and info["version"] == 1


def test_is_lossy():
    assert is_lossy("IVF1024,PQ144x8") and is_lossy("OPQ64_256,IVF256,PQ64") and is_lossy("IVF64,SQ8")
    assert not is_lossy("Flat") and not is_lossy("IVF16,Flat") and not is_lossy("IVF8,PQ8,RFlat")


@pytest.mark.slow
def test_build_patch_index_two_stage(tiny_encoder, synthetic_manifest, tmp_path):
    refs = read_corpus(synthetic_manifest)
    out = tmp_path / "ts"
    index = build_patch_index(
        tiny_encoder, refs, out, factory="IVF8,PQ16x4", target_recall=0.9, tune_queries=40, progress=False
    )
    assert index.store is not None and index.tuning is not None and (out / "vectors.f16").is_file()
    assert not (out / "meta.npz").exists()
    loaded = PatchIndex.load(out)
    assert (loaded.nprobe, loaded.k_candidates) == (index.nprobe, index.k_candidates)
    grid = tiny_encoder.encode([load_image(refs[5].image)])[0].numpy()  # (G, G, D)
    hit = loaded.search(grid[2, 7], k=1)[0][0]  # exact re-ranking finds the patch itself
    assert (hit.image_id, hit.row, hit.col) == (refs[5].id, 2, 7) and hit.score > 0.999
    sharded = build_patch_index(
        tiny_encoder,
        refs,
        tmp_path / "sh",
        factory="IVF8,PQ16x4",
        shard_images=5,
        target_recall=None,
        progress=False,
    )
    assert len(sharded.store) == len(index) and sharded.k_candidates == 256
    hit = PatchIndex.load(tmp_path / "sh").search(grid[2, 7], k=1)[0][0]
    assert (hit.image_id, hit.row, hit.col) == (refs[5].id, 2, 7)


def test_store_mismatch_is_refused(clustered, built, tmp_path):
    grids, _, _ = clustered
    index = built
    small = StoreWriter(tmp_path / "small", D)
    small.append(grids[0].reshape(-1, D))
    with pytest.raises(IndexError_, match="vector store"):
        PatchIndex(
            index.index,
            index.image_ids,
            index.img,
            index.row,
            index.col,
            index.factory,
            G,
            store=small.close(),
        )


@pytest.mark.slow
def test_build_index_command_two_stage(synthetic_manifest, tmp_path, capsys):
    from index_builder.cli import main

    out = tmp_path / "cli"
    argv = [
        "build-index",
        str(synthetic_manifest),
        "--out",
        str(out),
        "--no-progress",
        "--factory",
        "IVF8,PQ16x4",
    ]
    assert main([*argv, "--tune-queries", "30", "--target-recall", "0.9", "--store-dtype", "float32"]) == 0
    text = capsys.readouterr().out
    assert "two-stage: nprobe=" in text and "auto-tuned: recall@10=" in text
    info = json.loads((out / "index.json").read_text())
    assert (
        info["store"] == "float32" and (out / "vectors.f32").is_file() and info["tuning"]["n_queries"] == 30
    )
    assert main([*argv, "--target-recall", "1.5"]) == 2
    assert "--target-recall" in capsys.readouterr().err
    assert main([*argv[:-2], "--no-rerank", "--factory", "IVF8,PQ16x4", "--nprobe", "8"]) == 0
    assert PatchIndex.load(out).store is None and (out / "meta.npz").is_file()
