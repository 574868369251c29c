"""`vital batch --ray`: Ray Data on a local single-node Ray equals the local run, and resumes (real Ray)."""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: it is the optional extra (pip install -e '.[ray]')"
)

from server.ray_local import RAY_ENV  # noqa: E402  (after the skip: only with Ray installed)

QUESTION = "Where is the liver located?"


@pytest.fixture
def local_ray(monkeypatch):
    """A one-CPU Ray started by this test (its own short temp dir) and shut down after it."""
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # AF_UNIX socket paths stop at 107 bytes
    ray.init(
        num_cpus=1,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=150 * 1024 * 1024,
        _temp_dir=temp,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_run_equals_the_local_run_and_resumes(local_ray, tiny_bundle, tmp_path, encode_image):
    from server.batch import Answerer, BatchOptions, run_batch
    from server.batch_inputs import from_folder
    from server.batch_ray import run_batch_ray
    from server.settings import Settings

    d = tmp_path / "in"
    d.mkdir()
    for i in range(10):
        (d / f"{i:02d}.png").write_bytes(encode_image(20 + i, (64, 64)))
    (d / "10-corrupt.png").write_bytes(encode_image(0)[:80])
    items = from_folder(d, QUESTION)
    settings = Settings(bundle=tiny_bundle, device="cpu")
    opts = dict(max_new_tokens=6, batch_size=3, progress=False)

    local = tmp_path / "local.jsonl"
    run_batch(Answerer.load(settings), items, local, BatchOptions(**opts))

    on_ray = tmp_path / "ray.jsonl"
    first = run_batch_ray(settings, items, on_ray, BatchOptions(limit=4, **opts))
    assert first.written == 4
    second = run_batch_ray(settings, items, on_ray, BatchOptions(**opts))
    assert (second.skipped, second.written, second.errors) == (4, 7, 1)

    def by_id(path):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == len({r["id"] for r in rows}), "an item was answered twice"
        return {r["id"]: (r["answer"], r["k"], r["error"]) for r in rows}

    want, got = by_id(local), by_id(on_ray)
    assert len(want) == 11 and got == want  # compared by id: Ray returns batches in completion order
    assert got["10-corrupt.png"][2]["code"] == "unreadable_image"
