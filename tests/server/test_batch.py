"""`vital batch`: the server's decoding and latent loop over a folder / manifest / UID list, resumable JSONL."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from server.batch import Answerer, BatchOptions, run_batch
from server.batch_inputs import from_folder, from_manifest, from_uids
from vital_core.cli import main

QUESTION = "Where is the liver located?"
MAX_NEW = 6


def _zip(instances: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, data in enumerate(instances):
            zf.writestr(f"series/IM{k:04d}", data)
    return buf.getvalue()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def series(volumes) -> list[bytes]:
    return volumes.ct_series(seed=5)


@pytest.fixture(scope="module")
def answerer(tiny_bundle):
    """The bundle loaded as `vital serve` and `vital batch` load it."""
    from server.settings import Settings

    return Answerer.load(Settings(bundle=tiny_bundle, device="cpu"))


@pytest.fixture
def folder(tmp_path, encode_image, series, volumes) -> Path:
    """PNG, JPEG, a DICOM file, a NIfTI, a zipped series, a series subfolder, a nested PNG, and a note (not an
    item)."""
    d = tmp_path / "in"
    (d / "ct-series").mkdir(parents=True)
    (d / "nested" / "deeper").mkdir(parents=True)
    (d / "a.png").write_bytes(encode_image(0))
    (d / "b.jpg").write_bytes(encode_image(1, (96, 128), "JPEG"))
    (d / "nested" / "deeper" / "c.png").write_bytes(encode_image(2, (128, 64)))
    (d / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    (d / "series.zip").write_bytes(_zip(series))
    (d / "sphere.nii").write_bytes(volumes.stored_nifti("LPS"))
    for k, data in enumerate(series):
        (d / "ct-series" / f"IM{k:04d}").write_bytes(data)
    (d / "README.txt").write_text("not an image")
    return d


def test_folder_items_are_files_zips_and_series_folders(folder):
    items = {it.id: it for it in from_folder(folder, QUESTION)}
    want = ["a.png", "b.jpg", "ct-series", "ct.dcm", "nested/deeper/c.png", "series.zip", "sphere.nii"]
    assert sorted(items) == want
    parts = items["ct-series"].load()
    assert isinstance(parts, list) and len(parts) == 24  # one item: the whole series


def test_batch_answers_equal_the_answer_route(client, ask, folder, tiny_bundle, tmp_path, series):
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(folder), "--question", QUESTION, "--bundle", str(tiny_bundle), "--out", str(out)]
    assert main([*argv, "--batch-size", "3", "--max-new-tokens", str(MAX_NEW), "--no-progress"]) == 0
    rows = {r["id"]: r for r in _lines(out)}
    assert len(rows) == 7 and all(r["error"] is None for r in rows.values()), rows
    assert {r["batch_size"] for r in rows.values()} & {2, 3}  # items really went through in batches
    for rid, row in rows.items():
        if rid == "ct-series":  # a folder is sent as the parts of one multipart request
            files = [("image", (f"IM{k}", d, "application/dicom")) for k, d in enumerate(series)]
            data = {"question": QUESTION, "max_new_tokens": str(MAX_NEW)}
            r = client.post("/answer", files=files, data=data)
        else:
            r = ask(client, (folder / rid).read_bytes(), QUESTION, max_new_tokens=MAX_NEW)
        assert r.status_code == 200, r.text
        want = r.json()
        assert (row["answer"], row["k"], row["image"]) == (want["answer"], want["k"], want["image"]), rid
        assert row["timings_ms"]["decode_image"] > 0 and row["timings_ms"]["model"] > 0
    assert rows["series.zip"]["image"]["instances"] == 24  # the zip is one volume, not 24 items


def test_resume_skips_finished_items_and_cuts_a_torn_line(answerer, tmp_path, encode_image):
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    with (d / "manifest.jsonl").open("w") as f:
        for i in range(6):
            (d / "images" / f"{i}.png").write_bytes(encode_image(10 + i, (64, 64)))
            f.write(json.dumps({"id": f"s{i}", "image": f"images/{i}.png", "question": QUESTION}) + "\n")
    items = from_manifest(d / "manifest.jsonl")
    out = tmp_path / "out.jsonl"
    opts = dict(max_new_tokens=MAX_NEW, batch_size=2, progress=False)
    first = run_batch(answerer, items, out, BatchOptions(limit=3, **opts))
    assert (first.answered, first.skipped) == (3, 0)
    kept = out.read_text()
    with out.open("a") as f:  # a run killed while writing item s3's line
        f.write('{"id": "s3", "question": "Where')
    second = run_batch(answerer, items, out, BatchOptions(**opts))
    assert (second.skipped, second.answered, second.errors) == (3, 3, 0)
    assert second.model_calls == 2  # items s3-s5 only: two batches of at most 2
    text = out.read_text()
    assert text.startswith(kept)  # finished lines untouched, the torn one gone
    ids = [r["id"] for r in _lines(out)]
    assert ids == [f"s{i}" for i in range(6)]
    third = run_batch(answerer, items, out, BatchOptions(**opts))
    assert (third.skipped, third.written, third.model_calls) == (6, 0, 0)
    alone = run_batch(answerer, items[4:5], tmp_path / "alone.jsonl", BatchOptions(**opts))
    assert alone.answered == 1  # batched and alone give the same answer
    assert _lines(tmp_path / "alone.jsonl")[0]["answer"] == _lines(out)[4]["answer"]


def test_bad_items_are_recorded_and_the_run_goes_on(answerer, tmp_path, encode_image, series):
    d = tmp_path / "bad"
    d.mkdir()
    good = encode_image(0)
    (d / "1-good.png").write_bytes(good)
    (d / "2-corrupt.png").write_bytes(good[:60] + b"\x00" * 200)
    mixed = pydicom.dcmread(io.BytesIO(series[-1]))
    mixed.SeriesInstanceUID = "1.2.3.4.5"
    buf = io.BytesIO()
    mixed.save_as(buf)
    (d / "3-mixed.zip").write_bytes(_zip([*series[:-1], buf.getvalue()]))
    (d / "4-good.png").write_bytes(encode_image(1))
    out = tmp_path / "out.jsonl"
    stats = run_batch(
        answerer,
        from_folder(d, QUESTION),
        out,
        BatchOptions(max_new_tokens=4, batch_size=4, progress=False),
    )
    rows = {r["id"]: r for r in _lines(out)}
    assert (stats.answered, stats.errors) == (2, 2)
    assert rows["1-good.png"]["error"] is None and rows["4-good.png"]["answer"] is not None
    assert rows["2-corrupt.png"]["answer"] is None
    assert rows["2-corrupt.png"]["error"]["code"] == "unreadable_image", rows["2-corrupt.png"]
    assert "mixed series" in rows["3-mixed.zip"]["error"]["message"], rows["3-mixed.zip"]
    assert rows["3-mixed.zip"]["answer"] is None


def test_manifest_rows_without_a_question_or_image_are_recorded(tmp_path, answerer, encode_image, series):
    (tmp_path / "x.png").write_bytes(encode_image(3, (64, 64)))
    (tmp_path / "ct").mkdir()
    for k, data in enumerate(series):
        (tmp_path / "ct" / f"IM{k:04d}").write_bytes(data)
    rows = [
        {"id": "ok", "image": "x.png", "question": QUESTION},
        {"id": "series-folder", "image": "ct", "question": QUESTION},
        {"id": "no-question", "image": "x.png"},
        {"id": "missing-file", "image": "nope.png", "question": QUESTION},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    out = tmp_path / "out.jsonl"
    run_batch(answerer, from_manifest(manifest), out, BatchOptions(max_new_tokens=4, progress=False))
    got = {r["id"]: r["error"] for r in _lines(out)}
    assert got["ok"] is None and got["series-folder"] is None
    assert {r["id"]: r.get("image") for r in _lines(out)}["series-folder"]["instances"] == 24
    assert "question" in got["no-question"]["message"]
    assert got["missing-file"]["code"] == "unreadable_image"
    assert "invalid JSON" in got["m.jsonl:5"]["message"]


def test_uid_list_lines_are_items_and_pacs_failures_are_recorded(tmp_path, answerer):
    uids = tmp_path / "uids.txt"
    uids.write_text("# study/series[/instance]\n1.2.3/1.2.3.4\n1.2.3/1.2.3.4/1.2.3.4.5\nnot a uid\n\n")
    items = from_uids(uids, QUESTION, "http://127.0.0.1:9")  # nothing listens on port 9
    assert [it.id for it in items] == ["1.2.3/1.2.3.4", "1.2.3/1.2.3.4/1.2.3.4.5", "not a uid"]
    out = tmp_path / "out.jsonl"
    stats = run_batch(answerer, items, out, BatchOptions(progress=False))
    got = {r["id"]: r["error"] for r in _lines(out)}
    assert stats.errors == 3
    assert got["1.2.3/1.2.3.4"]["code"] == "pacs_unreachable"
    assert got["not a uid"]["code"] == "invalid_item"


def test_explain_gives_the_explain_routes_answer_and_steps(client, ask, tiny_bundle, tmp_path, encode_image):
    d = tmp_path / "ex"
    d.mkdir()
    (d / "a.png").write_bytes(encode_image(4, (64, 64)))
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(d), "--question", QUESTION, "--bundle", str(tiny_bundle), "--out", str(out)]
    assert main([*argv, "--explain", "--k", "2", "--max-new-tokens", "4", "--no-progress"]) == 0
    (row,) = _lines(out)
    want = ask(client, (d / "a.png").read_bytes(), QUESTION, route="/explain", k=2, max_new_tokens=4).json()
    assert (row["answer"], row["k"]) == (want["answer"], want["k"]) and row["k"] == 2
    assert [s["sentence"] for s in row["steps"]] == [s["sentence"] for s in want["steps"]]
    assert "png_base64" not in row["steps"][0]["heatmap"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["batch", "/no/such/dir", "--question", "q", "--out", "o.jsonl"], "does not exist"),
        (["batch", "{folder}", "--out", "o.jsonl"], "needs --question"),
        (["batch", "{uids}", "--question", "q", "--out", "o.jsonl"], "needs --pacs URL"),
        (["batch", "{folder}", "--question", "q", "--out", "o.jsonl", "--batch-size", "0"], "--batch-size"),
        (["batch", "{folder}", "--question", "q", "--out", "o.jsonl", "--bundle", "/nope"], "no bundle at"),
        (["batch", "{folder}", "--question", "q", "--out", "o.jsonl", "--ray-actors", "2"], "needs --ray"),
        (
            ["batch", "{folder}", "--question", "q", "--out", "o.jsonl", "--bundle", "{bundle}", "--k", "99"],
            "--k",
        ),
        (["batch", "{manifest}", "--question", "q", "--out", "o.jsonl"], "drop --question"),
    ],
)
def test_cli_errors_are_clear(argv, message, tmp_path, capsys, tiny_bundle):
    (tmp_path / "uids.txt").write_text("1.2/1.3\n")
    (tmp_path / "m.jsonl").write_text("{}\n")
    names = {"folder": tmp_path, "uids": tmp_path / "uids.txt", "manifest": tmp_path / "m.jsonl"}
    argv = [a.format(bundle=tiny_bundle, **names) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_ray_address_that_accepts_nothing_is_a_clear_error(tmp_path, tiny_bundle, encode_image, capsys):
    pytest.importorskip(
        "ray", reason="Ray is not installed: it is the optional extra (pip install -e '.[ray]')"
    )
    (tmp_path / "a.png").write_bytes(encode_image(0, (64, 64)))
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(tmp_path), "--question", "q", "--bundle", str(tiny_bundle), "--out", str(out)]
    assert main([*argv, "--ray", "127.0.0.1:1", "--no-progress"]) == 2  # no minutes-long wait in ray.init
    assert "nothing accepts connections" in capsys.readouterr().err
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray-replicas", "2"], "--ray-replicas needs --ray"),
        (["--ray-detach"], "--ray-detach needs --ray"),
        (["--ray", "127.0.0.1:1"], "nothing accepts connections"),  # no minutes-long wait in ray.init
    ],
)
def test_serve_ray_cli_errors_are_clear(extra, message, tiny_bundle, capsys):
    if "--ray" in extra:
        pytest.importorskip(
            "ray", reason="Ray is not installed: it is the optional extra (pip install -e '.[ray]')"
        )
    assert main(["serve", "--bundle", str(tiny_bundle), *extra]) == 2
    assert message in capsys.readouterr().err


def test_serve_ray_min_above_max_replicas_is_refused():
    pytest.importorskip(
        "ray", reason="Ray is not installed: it is the optional extra (pip install -e '.[ray]')"
    )
    from server.ray_app import deployment_options
    from server.settings import Settings

    with pytest.raises(ValueError, match="exceeds VITAL_RAY_MAX_REPLICAS"):
        deployment_options(Settings(ray_min_replicas=3, ray_max_replicas=2))
    opts = deployment_options(Settings(ray_num_replicas=2, ray_num_gpus=1))
    assert opts["num_replicas"] == 2 and "autoscaling_config" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    auto = deployment_options(Settings(device="auto"), cluster_gpus=4)
    assert auto["ray_actor_options"]["num_gpus"] == 1.0  # one GPU per replica on a GPU cluster
    assert auto["autoscaling_config"]["max_replicas"] == 4
