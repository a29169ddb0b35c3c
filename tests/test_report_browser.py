"""The report page in a real browser: headless Debian Chromium driven by Selenium.

The page (MNIST CNN, three digits, a copy of the model with a planted fault as ``--compare``)
is opened from ``file://`` with the network emulated offline and name resolution disabled. The
checks: no console error and no resource fetched; every <img> decodes; the layer filter and the
layer picker work when driven by script; the drift strip marks the planted fault's layer.
Skips (with the reason) only where Chromium, its driver or selenium cannot be installed;
``.ci/run`` installs them as root.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import MODELS

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.slow  # loads models/ (STYLE.md section 7)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,1000")
MNIST = MODELS / "mnist_cnn.onnx"
FAULT_WEIGHT, FAULT_CHANNEL = "conv2.weight", 3


def faulty_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with one output channel of ``FAULT_WEIGHT`` negated (as tests/test_compare.py)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index, tensor in enumerate(out.graph.initializer):
        if tensor.name == FAULT_WEIGHT:
            array = numpy_helper.to_array(tensor).copy()
            array[FAULT_CHANNEL] *= -1.0
            out.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onnx_featviz.reporting import ReportOptions, build_report, save_report

    work = tmp_path_factory.mktemp("report")
    fault = work / "mnist_fault.onnx"
    onnx.save_model(faulty_copy(onnx.load(MNIST)), fault)
    digits = [MODELS / "samples" / f"digit_{d}.png" for d in (0, 4, 9)]
    html = build_report(MNIST, digits, ReportOptions(
        data=MODELS / "samples", compare=fault, provider="cpu"))
    return save_report(html, work / "page dir" / "report.html")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("Debian chromium / chromium-driver are not installed and could not be "
                    "(apt-get install -y chromium chromium-driver; .ci/run does it as root)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def opened(browser: Any, page: Path) -> Any:
    browser.get(page.resolve().as_uri())
    browser.get_log("browser")  # start each test with an empty console
    return browser


def fault_layer() -> str:
    """The node that reads the planted weight, from the ONNX graph itself."""
    return str(next(n.name for n in onnx.load(MNIST).graph.node if FAULT_WEIGHT in n.input))


def test_loads_offline_from_file_with_no_console_error_and_no_fetch(browser: Any,
                                                                    page: Path) -> None:
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return navigator.onLine") is False
    assert browser.title == "featviz report: mnist_cnn.onnx"
    assert browser.execute_script("return document.readyState") == "complete"
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched == []
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    ids = browser.execute_script("return [...document.querySelectorAll('section')].map(s=>s.id)")
    assert ids == ["model", "predictions", "filters", "maps", "cams", "backprop", "stats",
                   "drift"]


def test_every_image_decodes(opened: Any) -> None:
    widths = opened.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "document.querySelectorAll('[hidden]').forEach(e => { e.hidden = false; });"
        "Promise.all([...document.images].map(i => { i.loading = 'eager';"
        "  return i.decode().then(() => [i.alt, i.naturalWidth, i.naturalHeight],"
        "                         () => [i.alt, 0, 0]); })).then(done);")
    assert len(widths) > 20
    assert [w for w in widths if w[1] <= 0 or w[2] <= 0] == []
    assert opened.get_log("browser") == []


def visible_rows(driver: Any, table: str) -> list[str]:
    rows = driver.find_elements("css selector", f"#{table} tbody tr")
    return [r.find_elements("css selector", "td")[1].text for r in rows if r.is_displayed()]


def test_layer_filter_hides_rows_without_the_text(opened: Any) -> None:
    names = [n.name for n in onnx.load(MNIST).graph.node]
    assert visible_rows(opened, "layers") == names
    box = opened.find_element("id", "layers-filter")
    for query, expected in (("conv", [n for n in names if "conv" in n.lower()]),
                            ("FC1", ["fc1"]), ("no such layer", []), ("", names)):
        opened.execute_script("arguments[0].value = arguments[1];"
                              "arguments[0].dispatchEvent(new Event('input'));", box, query)
        shown = visible_rows(opened, "layers")
        # a conv row also lists its activation ("Relu -> relu1"), so "conv" may show more
        assert set(expected) <= set(shown) if query == "conv" else shown == expected
        count = opened.find_element("id", "layers-count").text
        assert count == f"{len(shown)} of {len(names)} rows"
    box.send_keys("pool")
    assert visible_rows(opened, "layers") == [n for n in names if "pool" in n]


def test_layer_picker_shows_one_layer_at_a_time(opened: Any) -> None:
    from selenium.webdriver.support.ui import Select

    picker = Select(opened.find_element("id", "map-picker"))
    labels = [o.text for o in picker.options]
    assert [label.split()[0] for label in labels] == ["conv1", "conv2"]
    panels = opened.find_elements("css selector", "div.panel[data-picker='map-picker']")
    assert [p.is_displayed() for p in panels] == [True, False]
    opened.execute_script("arguments[0].value = '1';"
                          "arguments[0].dispatchEvent(new Event('change'));",
                          opened.find_element("id", "map-picker"))
    assert [p.is_displayed() for p in panels] == [False, True]
    images = panels[1].find_elements("css selector", "img")
    assert len(images) == 3  # one grid per digit
    opened.execute_script("arguments[0].forEach(i => i.scrollIntoView());", images)
    sizes = opened.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "Promise.all(arguments[0].map(i => i.decode().then(() => i.naturalWidth)))"
        ".then(done);", images)
    assert min(sizes) > 0
    picker.select_by_index(0)  # and back, through the real <select>
    assert [p.is_displayed() for p in panels] == [True, False]


def test_drift_strip_marks_the_planted_fault(opened: Any) -> None:
    opened.execute_script("document.getElementById('drift').scrollIntoView()")
    cells = opened.find_elements("css selector", "#drift-strip .cell")
    layers = [c.get_attribute("data-layer") for c in cells]
    first = opened.find_elements("css selector", "#drift-strip .cell.first")
    assert len(first) == 1 and first[0].is_displayed()
    assert first[0].get_attribute("data-layer") == fault_layer() == "conv2"
    assert opened.find_element("id", "first-divergent").text == "conv2"
    before = layers[:layers.index("conv2")]
    assert before and all(c.get_attribute("data-snr") == "identical"
                          for c in cells[:len(before)])
    color = first[0].value_of_css_property("background-color")
    rgb = [int(v) for v in color[color.index("(") + 1:color.index(")")].split(",")[:3]]
    assert rgb[0] > rgb[1]  # red side of the red-yellow-green scale
    highlighted = opened.find_elements("css selector", "#drift tr.hl td")
    assert highlighted and highlighted[0].text == "conv2"
    assert np.isfinite(float(first[0].get_attribute("data-snr").split()[0]))
