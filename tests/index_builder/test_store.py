"""Feature store: extraction, atomic shards, resume, load API, skipped samples, manifest reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index_builder.roi import ROIParams, extract_roi
from index_builder.samples import SampleError, load_image, load_mask, read_manifest
from index_builder.store import FeatureStore, StoreError, extract_to_store, shard_name

SPEC = {"encoder": "tiny", "seed": 0}


def test_extract_load_and_resume(tiny_encoder, synthetic_manifest, tmp_path):
    refs = read_manifest(synthetic_manifest, require_mask=True)
    params = ROIParams(tau=0.05)
    out = tmp_path / "store"
    rep = extract_to_store(tiny_encoder, refs, out, params, SPEC, shard_size=5, progress=False)
    assert rep.written == [0, 1, 2] and rep.manifest == out / "manifest.json"
    assert not list(out.glob("*.tmp*"))  # atomic: only finished files remain
    store = FeatureStore(out)
    assert len(store) == len(refs) and store.keys() == [r.id for r in refs]
    for ref in refs[:: len(refs) // 4]:
        feat, top = store.load(ref.id)
        direct = extract_roi(tiny_encoder, load_image(ref.image), load_mask(ref.mask), params)
        np.testing.assert_allclose(feat, direct.feature, atol=1e-5)
        np.testing.assert_array_equal(top, direct.top_pos)
        assert feat.shape == (64,) and top.shape == (5, 2) and abs(np.linalg.norm(feat) - 1) < 1e-5
    keys, feats = store.features()
    assert feats.shape == (len(refs), 64) and keys == store.keys()

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    again = extract_to_store(tiny_encoder, refs, out, params, SPEC, shard_size=5, progress=False)
    assert again.written == [] and again.skipped_shards == [0, 1, 2]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")} == mtimes

    # a torn shard and changed parameters are recomputed, never trusted
    (out / shard_name(1)).write_bytes(b"garbage")
    assert extract_to_store(tiny_encoder, refs, out, params, SPEC, shard_size=5, progress=False).written == [
        1
    ]
    changed = extract_to_store(
        tiny_encoder, refs, out, ROIParams(tau=0.5), SPEC, shard_size=5, progress=False
    )
    assert changed.written == [0, 1, 2]


def test_bad_samples_are_skipped_and_recorded(tiny_encoder, synthetic_manifest, tmp_path):
    refs = read_manifest(synthetic_manifest, require_mask=True)[:3]
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((48, 64), np.uint8))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((10, 10), np.uint8))
    rows = [
        {"id": r.id, "image": str(r.image), "mask": str(r.mask), "question": "q?", "answer": "a"}
        for r in refs
    ]
    rows += [
        {"id": "empty", "image": str(refs[0].image), "mask": str(empty)},
        {"id": "wrong", "image": str(refs[0].image), "mask": str(wrong)},
        {"id": "missing", "image": str(tmp_path / "nope.png"), "mask": str(empty)},
    ]
    man = tmp_path / "m.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    extract_to_store(
        tiny_encoder, read_manifest(man), tmp_path / "s", ROIParams(), SPEC, shard_size=4, progress=False
    )
    store = FeatureStore(tmp_path / "s")
    assert len(store) == 3 and set(store.skipped) == {"empty", "wrong", "missing"}
    assert "empty" in store.skipped["empty"] and "shape" in store.skipped["wrong"]
    with pytest.raises(StoreError, match="not in the store"):
        store.load("empty")


def test_manifest_reader_errors(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"id": "a", "image": "a.png", "mask": "a.png", "extra": 1}\n\n{"id": "a", "image": "b.png"}\n'
    )
    with pytest.raises(SampleError, match="duplicate"):
        read_manifest(p)
    p.write_text('{"id": "a"}\n')
    with pytest.raises(SampleError, match=":1: a row needs"):
        read_manifest(p)
    p.write_text('{"id": "a", "image": "a.png"}\n')
    with pytest.raises(SampleError, match="no 'mask'"):
        read_manifest(p, require_mask=True)
    with pytest.raises(StoreError, match="not a finished"):
        FeatureStore(tmp_path)
