"""HTTP behaviour on a tiny bundle: both input styles, every image format, every error code."""

from __future__ import annotations

import base64
import gzip
import io
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from index_builder.regions import DEFAULT_FRACTION
from server import Settings, create_app


def _err(r, status: int, code: str | None = None, text: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code, body
    if text:
        assert text in body["error"]["message"], body


def test_health_ready_info(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    info = client.get("/info").json()
    assert info["model"] == "vital-tiny" and info["preset"] == "tiny" and info["k_max"] == 4
    assert info["explain_available"] is True and {"torch", "transformers", "vital"} <= set(info["versions"])


def test_answer_multipart_and_json_agree(client, ask, encode_image):
    data = encode_image(3)
    a = ask(client, data, "Is there a lesion?", k=2, max_new_tokens=6)
    assert a.status_code == 200, a.text
    body = a.json()
    assert body["k"] == 2 and body["model"] == "vital-tiny" and isinstance(body["answer"], str)
    assert {"decode_image", "queue", "preprocess", "vision", "prefill", "latent", "decode", "total"} <= set(
        body["timings_ms"]
    )
    assert a.headers["x-request-id"] == body["request_id"]
    b = client.post(
        "/answer",
        json={
            "image": base64.b64encode(data).decode(),
            "question": "Is there a lesion?",
            "k": 2,
            "max_new_tokens": 6,
        },
    )
    assert b.status_code == 200 and b.json()["answer"] == body["answer"]
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    c = client.post(
        "/answer", json={"image": data_url, "question": "Is there a lesion?", "k": 2, "max_new_tokens": 6}
    )
    assert c.json()["answer"] == body["answer"]


def test_answer_equals_the_model_called_directly(client, ask, encode_image, tiny_model, image_factory):
    r = ask(client, encode_image(5), "Where is the liver?", k=3, max_new_tokens=8)
    direct = tiny_model.answer([image_factory(5)], ["Where is the liver?"], k=3, max_new_tokens=8)[0]
    assert r.json()["answer"] == direct.text


def test_request_id_is_echoed(client, ask, encode_image):
    r = ask(client, encode_image(0), k=0, max_new_tokens=2)
    assert len(r.headers["x-request-id"]) == 32
    r = client.get("/health", headers={"X-Request-Id": "pacs-42"})
    assert r.headers["x-request-id"] == "pacs-42"
    r = client.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"


def test_k_auto_uses_the_question_type(client, ask, encode_image):
    assert ask(client, encode_image(1), "Is the liver visible?", k="auto", max_new_tokens=2).json()["k"] == 1
    assert (
        ask(client, encode_image(1), "Where is the liver located?", k="auto", max_new_tokens=2).json()["k"]
        == 2
    )
    assert (
        ask(client, encode_image(1), "Analyze the visual findings.", k="auto", max_new_tokens=2).json()["k"]
        == 4
    )
    assert ask(client, encode_image(1), "Where?", max_new_tokens=2).json()["k"] == 4  # the bundle's default


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_pil_formats(client, ask, encode_image, fmt):
    r = ask(client, encode_image(2, (100, 140), fmt), max_new_tokens=3)
    assert r.status_code == 200 and r.json()["image"] == {"format": fmt.lower(), "width": 140, "height": 100}


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"]
)
def test_dicom(client, ask, name):
    data = Path(get_testdata_file(name)).read_bytes()
    r = ask(client, data, max_new_tokens=3)
    assert r.status_code == 200, r.text
    assert r.json()["image"]["format"] == "dicom"


def test_dicom_frame_field(client, ask):
    data = Path(get_testdata_file("SC_rgb_rle_2frame.dcm")).read_bytes()
    assert ask(client, data, max_new_tokens=2, frame=1).status_code == 200
    _err(ask(client, data, max_new_tokens=2, frame=5), 422, "invalid_request", "frame 5")


def test_nifti(client, ask):
    vol = np.random.default_rng(0).normal(size=(48, 40, 6)).astype(np.float32)
    data = nib.Nifti1Image(vol, np.eye(4)).to_bytes()
    r = ask(client, data, max_new_tokens=2, slice=2)
    assert r.status_code == 200
    assert r.json()["image"] == {"format": "nifti", "width": 48, "height": 40, "axis": "axial", "slice": 2}
    assert ask(client, gzip.compress(data), max_new_tokens=2).status_code == 200
    _err(ask(client, data, max_new_tokens=2, slice=9), 422, "invalid_request", "slice 9")


def test_400_unreadable(client, ask):
    _err(ask(client, b"\x89PNG\r\n\x1a\n" + b"\x01" * 64), 400, "unreadable_image")
    _err(
        client.post("/answer", json={"image": "!!notbase64!!", "question": "q"}),
        400,
        "unreadable_image",
        "base64",
    )
    _err(
        client.post("/answer", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "bad_request",
    )


def test_415_unsupported(client, ask):
    _err(ask(client, b"%PDF-1.4" + b"\x00" * 64), 415, "unsupported_image")  # GIF is supported since issue 12
    _err(
        client.post("/answer", content=b"abc", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    _err(client.post("/answer", content=b"abc"), 415)


def test_422_invalid_fields(client, ask, encode_image):
    png = encode_image(0)
    _err(ask(client, png, k=7), 422, "invalid_request", "between 0 and 4")
    _err(ask(client, png, k="many"), 422, "invalid_request", "k")
    _err(ask(client, png, max_new_tokens=0), 422, "invalid_request", "max_new_tokens")
    _err(ask(client, png, max_new_tokens=100000), 422, "invalid_request", "at most")
    _err(ask(client, png, ""), 422, "invalid_request", "question")
    _err(client.post("/answer", files={"image": ("a", png)}), 422, "invalid_request", "question")
    _err(
        client.post("/answer", data={"question": "q"}, files={"other": ("a", png)}),
        422,
        "invalid_request",
        "image",
    )
    _err(client.post("/answer", json={"question": "q"}), 422, "invalid_request", "image")
    _err(
        client.post("/answer", json={"image": "aGk=", "question": "q", "colour": 1}),
        422,
        "invalid_request",
        "colour",
    )
    _err(client.post("/answer", json=[1, 2]), 422, "invalid_request")


def test_404_and_405_are_json(client):
    _err(client.get("/nope"), 404, "not_found")
    _err(client.get("/answer"), 405, "method_not_allowed")


def test_explain(client, ask, encode_image, tiny_model):
    r = ask(client, encode_image(4), "Where is the lesion?", route="/explain", k=3, max_new_tokens=4, top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    answer = ask(client, encode_image(4), "Where is the lesion?", k=3, max_new_tokens=4).json()["answer"]
    assert body["answer"] == answer  # /explain does not change the answer
    assert [s["step"] for s in body["steps"]] == [1, 2, 3] and "explain" in body["timings_ms"]
    g = tiny_model.config.encoder.grid
    for step in body["steps"]:
        assert isinstance(step["sentence"], str)
        hm = step["heatmap"]
        assert base64.b64decode(hm["png_base64"]).startswith(b"\x89PNG")
        assert len(hm["grid"]) == g and len(hm["grid"][0]) == g
        r_, c_ = hm["peak"]
        assert hm["grid"][r_][c_] == max(max(row) for row in hm["grid"])
    k0 = ask(client, encode_image(4), route="/explain", k=0, max_new_tokens=2).json()
    assert k0["steps"] == []


def _peak_pixel(peak: tuple[int, int], g: int, h: int, w: int) -> tuple[float, float]:
    """(x, y) in the original image of the centre of heatmap cell `peak` (square pad + resize undone)."""
    side = max(h, w)
    r, c = peak
    return (c + 0.5) * side / g - (side - w) // 2, (r + 0.5) * side / g - (side - h) // 2


def _decode_mask(m: dict) -> np.ndarray:
    from pycocotools import mask as coco_mask

    return coco_mask.decode({"size": m["size"], "counts": m["counts"].encode()})


def test_explain_regions_on_a_non_square_image(client, ask, encode_image, tiny_model):
    """A 200 x 120 image: each step's mask decodes (pycocotools) to the original [h, w], its box is the
    mask's tight box, and a tight region (fraction 0.9) sits where the heatmap's peak cell maps back to."""
    h, w, g = 120, 200, tiny_model.config.encoder.grid
    data = encode_image(5, size=(h, w))
    q = "Where is the lesion?"
    body = ask(client, data, q, route="/explain", k=3, max_new_tokens=2).json()
    assert body["region_fraction"] == pytest.approx(DEFAULT_FRACTION) and len(body["steps"]) == 3
    tight = ask(client, data, q, route="/explain", k=3, max_new_tokens=2, region_fraction=0.9).json()
    low = ask(client, data, q, route="/explain", k=3, max_new_tokens=2, region_fraction=0.2).json()
    assert (tight["region_fraction"], low["region_fraction"]) == (0.9, 0.2)
    inside = 0
    for step, hi, lo in zip(body["steps"], tight["steps"], low["steps"]):
        assert step["heatmap"]["peak"] == hi["heatmap"]["peak"]
        masks = [_decode_mask(s["mask"]) for s in (hi, step, lo)]
        for s, mask in zip((hi, step, lo), masks):
            assert s["mask"]["size"] == [h, w] and isinstance(s["mask"]["counts"], str)
            assert mask.shape == (h, w) and mask.any()
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert s["box"] == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        # a lower threshold grows the region around the same peak
        assert (masks[1] >= masks[0]).all() and (masks[2] >= masks[1]).all()
        x, y = _peak_pixel(step["heatmap"]["peak"], g, h, w)
        if 0 <= x < w and 0 <= y < h:  # a peak in the padding rows has no original pixel
            inside += 1
            assert masks[0][int(y), int(x)], (step["heatmap"]["peak"], (x, y), hi["box"])
    assert inside, "no step's peak fell inside the image: the test image does not exercise the mapping"
    for bad in (0, 1.5, "nan"):
        r = ask(client, data, route="/explain", k=1, max_new_tokens=2, region_fraction=bad)
        _err(r, 422, "invalid_request", "region_fraction")


def test_explain_plane_of_a_volume_slice_and_a_dicom_frame(client, ask, encode_image):
    """The boxes and masks say which 2-D image of the source they are on: a NIfTI slice (its own, non-square
    size) and a multi-frame DICOM's frame; a plain image has none."""
    vol = np.zeros((48, 40, 6), np.float32)
    vol[5:12, 10:20, :] = 50.0
    nii = nib.Nifti1Image(vol, np.eye(4)).to_bytes()
    body = ask(client, nii, route="/explain", k=1, max_new_tokens=2, slice=3, axis="coronal").json()
    assert body["plane"] == {"frame": 0, "slice": 3, "axis": "coronal"}
    h, w = body["image"]["height"], body["image"]["width"]
    assert (w, h) == (48, 6) and body["steps"][0]["mask"]["size"] == [h, w]  # coronal: x by z
    x0, y0, x1, y1 = body["steps"][0]["box"]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    dcm = Path(get_testdata_file("SC_rgb_rle_2frame.dcm")).read_bytes()
    framed = ask(client, dcm, route="/explain", k=1, max_new_tokens=2, frame=1).json()
    assert framed["plane"] == {"frame": 1, "slice": None, "axis": None}
    assert framed["steps"][0]["mask"]["size"] == [100, 100]
    png = ask(client, encode_image(1), route="/explain", k=1, max_new_tokens=2).json()
    assert png["plane"] == {"frame": None, "slice": None, "axis": None}


def test_explain_disabled_and_unavailable(tiny_bundle, tmp_path, ask, encode_image, wait_ready):
    app = create_app(Settings(bundle=tiny_bundle, explain=False))
    with TestClient(app) as c:
        wait_ready(c)
        _err(ask(c, encode_image(0), route="/explain"), 404, "explain_disabled")
        assert c.get("/info").json()["explain_available"] is False
    import shutil

    shutil.copytree(tiny_bundle, tmp_path / "b")
    (tmp_path / "b" / "scaffold.safetensors").unlink()
    with TestClient(create_app(Settings(bundle=tmp_path / "b"))) as c:
        wait_ready(c)
        _err(ask(c, encode_image(0), route="/explain"), 503, "explain_unavailable", "no scaffolding")
        assert ask(c, encode_image(0), max_new_tokens=2).status_code == 200  # /answer never needs it


def test_explain_is_warmed_before_ready(tiny_bundle, ask, encode_image, wait_ready, monkeypatch):
    """Default start-up: by the time /ready is 200 the /explain modules are loaded and one explanation
    has run (at the bundle's K, outside the request queue), so the first user's /explain is not cold."""
    from server.explain import Explainer

    calls = []
    real = Explainer.explain

    def counted(self, image, question, k, max_new_tokens, top_k, *rest):
        calls.append((image.size, k, top_k))
        return real(self, image, question, k, max_new_tokens, top_k, *rest)

    monkeypatch.setattr(Explainer, "explain", counted)
    with TestClient(create_app(Settings(bundle=tiny_bundle))) as c:
        wait_ready(c)
        svc = c.app.state.service
        assert svc.explainer is not None  # (this test bundle has no index: nearest patches empty)
        assert calls == [((128, 128), svc.model.config.latent.k_default, 1)]
        assert "vital_queue_wait_seconds_count 0.0" in c.get("/metrics").text  # not a request
        assert ask(c, encode_image(0), route="/explain", k=2, max_new_tokens=2).status_code == 200
        assert len(calls) == 2


def test_failed_explain_warm_up_still_serves_answers(tiny_bundle, ask, encode_image, wait_ready, monkeypatch):
    import server.explain as explain_mod

    def broken(*args):
        raise RuntimeError("index file is corrupt")

    monkeypatch.setattr(explain_mod, "load_explainer", broken)
    with TestClient(create_app(Settings(bundle=tiny_bundle))) as c:
        wait_ready(c)
        assert ask(c, encode_image(0), max_new_tokens=2).status_code == 200
        _err(ask(c, encode_image(0), route="/explain"), 503, "explain_unavailable", "index file is corrupt")


def test_answer_never_loads_the_scaffolding(client, ask, encode_image, tiny_bundle, wait_ready):
    # explain_preload=False: /explain loads on first use, so nothing but /answer could load it here
    with TestClient(create_app(Settings(bundle=tiny_bundle, explain_preload=False))) as c:
        wait_ready(c)
        assert ask(c, encode_image(0), max_new_tokens=2).status_code == 200
        svc = c.app.state.service
        assert svc.explainer is None and svc.model.scaffold is None


def test_readiness_during_startup(tiny_bundle, ask, encode_image, wait_ready):
    from vital_core.bundle import load_bundle

    release = threading.Event()

    def slow_loader(settings, device):
        release.wait(30)
        return load_bundle(settings.bundle, device=device)

    with TestClient(create_app(Settings(bundle=tiny_bundle), loader=slow_loader)) as c:
        assert c.get("/health").status_code == 200
        _err(c.get("/ready"), 503, "not_ready", "loading")
        _err(ask(c, encode_image(0)), 503, "not_ready")
        release.set()
        wait_ready(c)
        assert ask(c, encode_image(0), max_new_tokens=2).status_code == 200


def test_failed_load_is_reported(tmp_path, ask, encode_image):
    with TestClient(create_app(Settings(bundle=tmp_path / "missing"))) as c:
        for _ in range(200):
            if c.app.state.service.load_error:
                break
            threading.Event().wait(0.01)
        _err(c.get("/ready"), 503, "not_ready", "failed to load")
        assert c.get("/health").status_code == 200


def test_auth(tiny_bundle, ask, encode_image, wait_ready):
    with TestClient(create_app(Settings(bundle=tiny_bundle, api_key="s3cret"))) as c:
        wait_ready(c)
        for path in ("/health", "/ready", "/metrics"):
            assert c.get(path).status_code == 200
        _err(ask(c, encode_image(0)), 401, "unauthorized", "Bearer")
        _err(c.get("/info"), 401, "unauthorized")
        bad = c.post(
            "/answer",
            headers={"Authorization": "Bearer wrong"},
            files={"image": ("a", encode_image(0))},
            data={"question": "q"},
        )
        _err(bad, 401, "unauthorized")
        assert bad.headers["www-authenticate"] == "Bearer"
        ok = c.post(
            "/answer",
            headers={"Authorization": "Bearer s3cret"},
            files={"image": ("a", encode_image(0))},
            data={"question": "q", "max_new_tokens": "2"},
        )
        assert ok.status_code == 200
        assert c.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_body_limit(tiny_bundle, ask, encode_image, wait_ready):
    with TestClient(create_app(Settings(bundle=tiny_bundle, max_body_bytes=4096, max_pixels=150 * 150))) as c:
        wait_ready(c)
        big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="PNG")
        _err(ask(c, buf.getvalue()), 413, "body_too_large", "4096")

        def chunks():
            yield b"x" * 3000
            yield b"x" * 3000

        _err(
            c.post("/answer", content=chunks(), headers={"content-type": "application/json"}),
            413,
            "body_too_large",
        )
        flat = io.BytesIO()
        Image.new("RGB", (160, 160), (90, 90, 90)).save(flat, format="PNG")  # small file, too many pixels
        assert len(flat.getvalue()) < 4096
        _err(ask(c, flat.getvalue()), 413, "image_too_large", "25600")


def test_docs_behind_the_key_and_served_offline(tiny_bundle, wait_ready):
    key = {"Authorization": "Bearer s3cret"}
    basic = {"Authorization": "Basic " + base64.b64encode(b"anyone:s3cret").decode()}
    with TestClient(create_app(Settings(bundle=tiny_bundle, api_key="s3cret"))) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = c.get(path)
            _err(r, 401, "unauthorized", "API key")
            assert "Basic" in r.headers["www-authenticate"]  # a browser asks for the key
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(path, headers=key).status_code == 200
            assert c.get(path, headers=basic).status_code == 200
        spec = c.get("/openapi.json", headers=key).json()
        assert spec["components"]["securitySchemes"]["APIKey"] == {
            "type": "http",
            "scheme": "bearer",
            "description": spec["components"]["securitySchemes"]["APIKey"]["description"],
        }
        for path in ("/answer", "/explain"):
            assert spec["paths"][path]["post"]["security"] == [{"APIKey": []}]
        assert "security" not in spec["paths"]["/health"]["get"]
        page = c.get("/docs", headers=key).text
        assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
        assert "/docs-assets/redoc.standalone.js" in c.get("/redoc", headers=key).text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            r = c.get(f"/docs-assets/{asset}")  # public code: no key needed
            assert r.status_code == 200 and len(r.content) > 10_000, asset
    with TestClient(create_app(Settings(bundle=tiny_bundle, api_key="s3cret", docs_public=True))) as c:
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200
    with TestClient(create_app(Settings(bundle=tiny_bundle))) as c:
        assert c.get("/docs").status_code == 200 and c.get("/redoc").status_code == 200
