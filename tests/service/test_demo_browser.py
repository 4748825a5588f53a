"""The demo page at /demo used like a person would, in headless Chromium: upload images, type a prefix, paste a series.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package (its own browser download is never
used); without either the module is skipped.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from live_server import Server

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
    pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright)")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator["sync_api.Page"]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(f"{server.url}/demo")  # redirected to /demo/
            page.wait_for_function("document.querySelectorAll('#generate-model option').length > 0")
            yield page
            assert not failed, f"requests that failed: {failed}"  # nothing external, nothing broken
        finally:
            browser.close()


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    from models.data import load_dataset

    digits = load_dataset("digits", {}, seed=0)
    shapes = load_dataset("shapes", {"train_count": 1, "test_count": 4}, seed=0)
    files = {"digit": tmp_path / "digit.png", "shapes": tmp_path / "shapes.png"}
    Image.fromarray(digits.test_x[0, 0].numpy()).resize((64, 64), Image.Resampling.NEAREST).save(files["digit"])
    Image.fromarray(shapes.test_x[0].permute(1, 2, 0).numpy()).save(files["shapes"])
    return files


def test_models_fill_the_pickers(page: "sync_api.Page", server: Server) -> None:
    options = page.locator("#classify-model option")
    assert options.all_inner_texts() == [f"test-digits ({server.tags['test-digits'].split(':')[1]})",
                                         f"test-digits-mlp ({server.tags['test-digits-mlp'].split(':')[1]})"]
    assert page.locator("#classify-model").input_value() == "test-digits"  # the config's default


def test_classify_an_upload(page: "sync_api.Page", images: dict[str, Path], server: Server) -> None:
    page.set_input_files("#classify-files", [images["digit"], images["shapes"]])
    page.fill("#classify-k", "3")
    page.click("#classify-run")
    tables = page.locator("#classify-output table.labels")
    tables.first.wait_for()
    assert tables.count() == 2
    api = httpx.post(f"{server.url}/classify", files={"images": images["digit"].read_bytes()}).json()
    assert tables.nth(0).locator("td.label").first.inner_text() == api["results"][0]["top"][0]["label"]
    assert tables.nth(0).locator("tr").count() == 3
    assert "converted RGB→L" in tables.nth(1).locator("caption").inner_text()


def test_segment_shows_the_overlay(page: "sync_api.Page", images: dict[str, Path]) -> None:
    page.set_input_files("#segment-file", images["shapes"])
    page.click("#segment-run")
    overlay = page.locator("#segment-overlay")
    overlay.wait_for()
    assert page.evaluate("document.getElementById('segment-overlay').naturalWidth") == 64
    assert page.locator("#segment-output table.shares tr").count() >= 1


def test_generate_from_a_typed_prefix(page: "sync_api.Page") -> None:
    page.fill("#generate-prefix", "the time ")
    page.fill("#generate-length", "30")
    page.fill("#generate-temperature", "0")
    page.click("#generate-run")
    continuation = page.locator("#generate-output .continuation")
    continuation.wait_for()
    assert len(continuation.inner_text()) == 30
    page.fill("#generate-prefix", "The Time!")  # characters the model does not know: the page says so
    page.click("#generate-run")
    page.locator("#generate-output .error").wait_for()
    assert "422" in page.inner_text("#generate-output") and "does not know" in page.inner_text("#generate-output")


def test_forecast_a_pasted_series_is_plotted(page: "sync_api.Page") -> None:
    series = " ".join(f"{v:.4f}" for v in np.sin(0.01 * np.arange(1, 201)))
    page.fill("#forecast-values", series)
    page.fill("#forecast-k", "12")
    page.click("#forecast-run")
    page.locator("#forecast-plot").wait_for()
    points = page.get_attribute("#forecast-line", "points")
    assert points is not None and len(points.split()) == 13  # the last known value, then the 12 predicted
    assert len(page.inner_text("#forecast-numbers").removeprefix("next: ").split(", ")) == 12
