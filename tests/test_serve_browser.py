"""The web page end to end: a real uvicorn server, a real checkpoint, headless Debian Chromium.

CI installs the browser with ``.ci/install-browser.sh``; the test skips only when
``/usr/bin/chromium`` is missing.
"""
from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from common import SHARED_DATA

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
CAMVID_VAL = SHARED_DATA / "camvid" / "val"
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                  "Car", "Pedestrian", "Bicyclist"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="/usr/bin/chromium is missing: run .ci/install-browser.sh"),
]


def _camvid_image(tmp_path: Path) -> Path:
    """The first CamVid validation image, or a synthetic street-like one where data is absent."""
    files = sorted(CAMVID_VAL.glob("*.png"))
    if files:
        return files[0]
    img = np.zeros((360, 480, 3), dtype=np.uint8)
    img[:150] = (120, 160, 220)  # sky
    img[250:] = (90, 90, 90)  # road
    path = tmp_path / "street.png"
    Image.fromarray(img).save(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``pixelwise serve`` (uvicorn) in a subprocess on 127.0.0.1, serving a tiny checkpoint."""
    import httpx
    import torch

    from pixelwise import save_checkpoint
    from pixelwise.models import build_model

    torch.manual_seed(0)
    kwargs = dict(in_channels=3, num_classes=len(CAMVID_CLASSES), base_channels=4, depth=2)
    folder = tmp_path_factory.mktemp("browser")
    ckpt = folder / "tiny_camvid.pt"
    save_checkpoint(ckpt, build_model("unet", **kwargs), "unet", kwargs, CAMVID_CLASSES,
                    mean=(0.39, 0.41, 0.43), std=(0.30, 0.31, 0.31))
    port = _free_port()
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pixelwise.cli import main; main()", "serve",
         "--checkpoint", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
         "--threads", "1", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (folder / "server.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pixelwise serve did not answer within 60 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    # No skip here: playwright is a dev dependency, only a missing browser may skip.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _pixel(page, x: int, y: int) -> list[int]:
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('overlay').getContext('2d')"
        ".getImageData(x, y, 1, 1).data.slice(0, 3))", [x, y])


def _set_opacity(page, value: int) -> None:
    page.eval_on_selector("#opacity", "(el, v) => { el.value = v; "
                          "el.dispatchEvent(new Event('input')); }", value)


def test_upload_shows_overlay_legend_and_download(server, browser, tmp_path):
    import httpx

    image_path = _camvid_image(tmp_path)
    original = np.asarray(Image.open(image_path).convert("RGB"))
    height, width = original.shape[:2]
    # What the server predicts for this image, asked directly, to check what the page draws.
    with open(image_path, "rb") as f:
        r = httpx.post(f"{server}/predict", files={"file": (image_path.name, f, "image/png")},
                       timeout=60)
    assert r.status_code == 200
    mask_img = Image.open(io.BytesIO(r.content))
    mask = np.asarray(mask_img)
    colours = np.asarray(mask_img.getpalette()[: 3 * len(CAMVID_CLASSES)]).reshape(-1, 3)

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#legend li")  # filled from GET /model
    assert page.locator("#model-info").inner_text() == "unet · 11 classes · torch"

    page.set_input_files("#file", str(image_path))
    page.wait_for_selector("#overlay[data-state=ready]", timeout=30_000)
    assert page.is_visible("#overlay")
    size = page.evaluate("() => { const c = document.getElementById('overlay'); "
                         "return [c.width, c.height]; }")
    assert size == [width, height]

    names = page.locator("#legend li .name").all_inner_texts()
    assert names == CAMVID_CLASSES
    areas = page.locator("#legend li .area").all_inner_texts()
    assert all(a.endswith("%") for a in areas)
    expected_pct = np.bincount(mask.ravel(), minlength=len(CAMVID_CLASSES)) / mask.size * 100
    assert [float(a[:-1]) for a in areas] == pytest.approx(expected_pct, abs=0.051)

    # Opacity 100%: the canvas shows the class colours exactly; 0%: the photo itself.
    points = [(5, 5), (width // 2, height // 2), (width - 3, height - 7)]
    _set_opacity(page, 100)
    for x, y in points:
        assert _pixel(page, x, y) == colours[mask[y, x]].tolist()
    _set_opacity(page, 0)
    for x, y in points:
        assert _pixel(page, x, y) == original[y, x].tolist()
    _set_opacity(page, 50)
    assert page.locator("#opacity-value").inner_text() == "50%"

    link = page.locator("#download")
    assert link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download") == f"{image_path.stem}_mask.png"
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert errors == []
    page.close()


def test_page_shows_server_error_for_a_bad_file(server, browser, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page = browser.new_page()
    page.goto(server + "/")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error")
    assert page.locator("#status").inner_text().startswith("415")
    page.close()


def test_tiff_falls_back_to_the_server_overlay(server, browser, tmp_path):
    # Chromium cannot show TIFF: the page draws the server's overlay and disables the slider.
    img = np.zeros((48, 64, 3), dtype=np.uint8)
    img[:, 32:] = 200
    path = tmp_path / "scene.tif"
    Image.fromarray(img).save(path, format="TIFF")
    page = browser.new_page()
    page.goto(server + "/")
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#overlay[data-state=ready]", timeout=30_000)
    assert page.is_visible("#overlay-note")
    assert page.is_disabled("#opacity")
    assert page.evaluate("() => document.getElementById('overlay').width") == 64
    page.close()
