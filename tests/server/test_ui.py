"""The /ui viewer in a real headless Chromium (Debian's chromium + chromium-driver) against a live server."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
QUESTION = "Describe the appearance of the aorta in this CT scan."
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
)
STATIC = Path(__file__).resolve().parents[2] / "server" / "static" / "ui"


def test_static_files_are_self_contained(client):
    """Served by the app, no external URL anywhere (works offline, no CDN)."""
    assert client.get("/ui", follow_redirects=False).status_code in (307, 308)
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in ("app.js", "style.css"):
        assert client.get(f"/ui/{name}").status_code == 200
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver (`make test-deps` as root)"
        )
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _phantom(tmp_path: Path) -> tuple[Path, bytes]:
    from training.phantom.generate import make_sample

    buf = io.BytesIO()
    Image.fromarray(make_sample(36, seed=0).scene.to_uint8()).save(buf, format="PNG")
    path = tmp_path / "ct-000036.png"
    path.write_bytes(buf.getvalue())
    return path, buf.getvalue()


def _check_region(d, canvas, step: dict) -> None:
    """The canvas over the heatmap shows the step's region: the page's own COCO RLE decoding gives the
    area pycocotools gives and the mask's own box is /explain's box, and the box's corner is drawn where the square pad puts
    the original pixel."""
    from pycocotools import mask as coco_mask

    assert canvas.is_displayed()
    m = coco_mask.decode({"size": step["mask"]["size"], "counts": step["mask"]["counts"].encode()})
    assert canvas.get_attribute("data-box") == ",".join(str(v) for v in step["box"])
    assert int(canvas.get_attribute("data-mask-area")) == int(m.sum()) > 0
    assert canvas.get_attribute("data-mask-box") == canvas.get_attribute(
        "data-box"
    )  # decoded the right way up
    h, w = step["mask"]["size"]
    side = max(h, w)
    x0, y0 = step["box"][0] + (side - w) // 2, step["box"][1] + (side - h) // 2
    r, g, b, a = d.execute_script(
        "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data)",
        canvas,
        x0,
        y0 + 2,
    )
    assert a > 0 and g > r and g > b, (r, g, b, a)  # the green box's left edge


@pytest.mark.slow
def test_viewer_in_chromium(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    d, el = browser, browser.find_element
    wait = WebDriverWait(d, 120)
    png_path, png = _phantom(tmp_path)
    d.get(f"{live_server.base}/ui")
    assert d.current_url.endswith("/ui/")
    wait.until(
        lambda _: "API key" in el(By.ID, "model-info").text
    )  # /info said 401: the page asks for the key

    # upload and ask without the key: the server's 401 is shown, nothing else
    el(By.ID, "file").send_keys(str(png_path))
    assert el(By.ID, "preview").is_displayed() and "ct-000036.png" in el(By.ID, "file-name").text
    el(By.ID, "question").send_keys(QUESTION)
    el(By.ID, "ask").click()
    wait.until(lambda _: el(By.ID, "error").is_displayed())
    assert "401 unauthorized" in el(By.ID, "error").text and not el(By.ID, "result").is_displayed()

    # the key: stored for the session, sent as a bearer token; /info fills the K choices
    el(By.ID, "api-key").send_keys(live_server.key, Keys.TAB)
    wait.until(lambda _: "vital-tiny" in el(By.ID, "model-info").text)
    assert d.execute_script("return sessionStorage.getItem('vital.apiKey')") == live_server.key
    k_select = Select(el(By.ID, "k"))
    assert [o.get_attribute("value") for o in k_select.options] == ["", "auto", "0", "1", "2", "3", "4"]
    k_select.select_by_value("3")
    el(By.ID, "ask").click()
    wait.until(lambda _: el(By.ID, "result").is_displayed() and el(By.ID, "answer").text)
    assert not el(By.ID, "error").is_displayed()

    # what the page shows is what /explain returns
    auth = {"Authorization": f"Bearer {live_server.key}"}
    ref = httpx.post(
        f"{live_server.base}/explain",
        files={"image": ("a.png", png)},
        headers=auth,
        timeout=60,
        data={"question": QUESTION, "k": "3", "top_k": "5"},
    ).json()
    assert el(By.ID, "answer").text == ref["answer"] != ""
    assert "K = 3" in el(By.ID, "meta").text and "png 128×128" in el(By.ID, "meta").text
    thumbs = d.find_elements(By.CSS_SELECTOR, "#strip img.heatmap-thumb")
    assert len(thumbs) == 3
    assert all(
        d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", t) > 0 for t in thumbs
    )
    for i in range(3):  # the slider walks the steps: heatmap, sentence, nearest patches
        if i:
            el(By.ID, "step-slider").send_keys(Keys.RIGHT)
        step = ref["steps"][i]
        wait.until(lambda _, i=i: el(By.ID, "step-number").text == str(i + 1))
        assert (
            el(By.ID, "heatmap").get_attribute("src")
            == "data:image/png;base64," + step["heatmap"]["png_base64"]
        )
        assert el(By.ID, "step-sentence").text == step["sentence"].strip()
        rows = d.find_elements(By.CSS_SELECTOR, "#nearest tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [
            p["image_id"] for p in step["nearest"]
        ]
        assert len(rows) == 5
        assert d.find_elements(By.CSS_SELECTOR, "#strip button")[i].get_attribute("class") == "selected"
        _check_region(d, el(By.ID, "region"), step)
    toggle = el(By.ID, "show-region")
    toggle.click()  # the region toggles off and back on
    assert not el(By.ID, "region").is_displayed() and el(By.ID, "region-info").text == ""
    toggle.click()
    assert el(By.ID, "region").is_displayed() and "region: box" in el(By.ID, "region-info").text
    thumbs[0].click()  # the strip selects a step too
    assert el(By.ID, "step-number").text == "1"
    shot = tmp_path / "vital-ui.png"
    assert d.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height >= 800
    if os.environ.get("VITAL_UI_SCREENSHOT"):  # to refresh docs/img/ui.png
        shutil.copy(shot, os.environ["VITAL_UI_SCREENSHOT"])

    # the key survives a reload (sessionStorage); a DICOM goes through the same page, K auto
    d.refresh()
    wait.until(lambda _: "vital-tiny" in el(By.ID, "model-info").text)
    assert el(By.ID, "api-key").get_attribute("value") == live_server.key
    from pydicom.data import get_testdata_file

    el(By.ID, "file").send_keys(get_testdata_file("CT_small.dcm"))
    assert not el(By.ID, "preview").is_displayed()  # the browser cannot draw DICOM; the heatmaps will
    el(By.ID, "question").send_keys("Is there a lesion?")
    Select(el(By.ID, "k")).select_by_value("auto")
    el(By.ID, "ask").click()
    wait.until(lambda _: "dicom" in el(By.ID, "meta").text)
    assert "K = 1" in el(By.ID, "meta").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#strip img.heatmap-thumb")) == 1
    logs = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert logs == [], logs  # no script errors (the deliberate 401s aside)
