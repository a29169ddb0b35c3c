"""``render.html``: sections as data -> one self-contained page (pure; no model, no browser).

Checked with independent tools: html5lib's strict parser (valid structure), PIL decoding the
data URIs back, matplotlib's own RdYlGn colours for the drift strip.
"""

from __future__ import annotations

import base64
import io
import math
import re
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
from PIL import Image

from onnx_featviz.errors import InputError
from onnx_featviz.render import html as page

html5lib = pytest.importorskip("html5lib", reason="html5lib is not installed (the test extra)")

EXTERNAL = re.compile(r"(?i)\b(?:https?|ftp|wss?|file):|(?:src|href)\s*=\s*[\"']?//")


def picture(width: int = 40, height: int = 30) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def sample_sections() -> list[page.Section]:
    table = page.Table(("#", "name", "op"), (("0", "conv<1>", "Conv"), ("1", "relu&1", "Relu"),
                                             ("2", "fc", "Gemm")), key="layers", filter=True,
                       highlight=(1,))
    picker = page.Picker("map-picker", "layer", (
        page.Panel("a", (page.Figure(picture(), "first"),)),
        page.Panel("b", (page.Gallery((page.Figure(picture(8, 8), "second"),)),))))
    strip = page.DriftStrip((page.StripCell("c1", math.inf, False),
                             page.StripCell("c2", 12.5, True),
                             page.StripCell("c3", math.nan, True)), "c2")
    return [
        page.Section("model", "Model <card>", (page.Facts((("opset", "13"),)), table)),
        page.Section("maps", "Maps", (page.Text("note & more", "note"), picker)),
        page.Section("drift", "Drift", (strip, page.Row((page.Card("x", (page.Text("y"),)),)))),
    ]


class Collector(HTMLParser):
    """Every start tag with its attributes, and the text inside each element id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def collect(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Collector()
    parser.feed(text)
    return parser.tags


def test_page_is_valid_html_with_no_external_url() -> None:
    text = page.render_report("t <1>", sample_sections(), subtitle="a & b")
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)
    assert EXTERNAL.search(text) is None
    tags = collect(text)
    assert not [t for t, a in tags if t in ("link", "iframe", "object", "embed")]
    assert not [a for t, a in tags if t == "script" and "src" in a]
    sources = [a["src"] for t, a in tags if t == "img"]
    assert len(sources) == 2 and all(s and s.startswith("data:image/webp;base64,")
                                     for s in sources)
    ids = {a["id"] for _, a in tags if a.get("id")}
    links = [a["href"] for t, a in tags if t == "a"]
    assert links == ["#model", "#maps", "#drift"] and {(x or "")[1:] for x in links} <= ids
    csp = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in (csp[0] or "")


def test_text_is_escaped() -> None:
    text = page.render_report("t", sample_sections())
    assert "<td>conv&lt;1&gt;</td>" in text and "<td>relu&amp;1</td>" in text
    assert "<h2>Model &lt;card&gt;</h2>" in text and "<1>" not in text


@pytest.mark.parametrize("fmt", page.IMAGE_FORMATS)
def test_data_uri_decodes_to_the_picture(fmt: str) -> None:
    ramp = np.linspace(0, 255, 50, dtype=np.float64)
    smooth = np.stack([np.tile(ramp, (20, 1)), np.tile(ramp[::-1], (20, 1)),
                       np.full((20, 50), 128.0)], axis=-1)
    image = Image.fromarray(smooth.astype(np.uint8))
    uri = page.image_data_uri(image, fmt)
    head, data = uri.split(",", 1)
    assert head == f"data:image/{fmt};base64"
    back = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    assert back.size == (50, 20)
    error = np.abs(np.asarray(back, np.float64) - np.asarray(image, np.float64)).mean()
    assert error == 0.0 if fmt == "png" else error < 4.0


def test_data_uri_thumbnail_keeps_the_aspect_ratio() -> None:
    uri = page.image_data_uri(picture(400, 100), "png", max_side=200)
    back = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert back.size == (200, 50)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(InputError, match="unknown report image format 'gif'; choose from"):
        page.image_data_uri(picture(), "gif")


def test_filter_table_and_highlight() -> None:
    text = page.render_report("t", sample_sections())
    tags = collect(text)
    box = [a for t, a in tags if t == "input"]
    assert box == [{"type": "search", "class": "table-filter", "id": "layers-filter",
                    "data-table": "layers", "placeholder": "filter rows (name, op, shape...)",
                    "aria-label": "filter layers"}]
    assert [a.get("class") for t, a in tags if t == "tr"] == [None, None, "hl", None]
    assert '<span id="layers-count">3 of 3 rows</span>' in text


def test_picker_shows_the_first_panel_only() -> None:
    tags = collect(page.render_report("t", sample_sections()))
    panels = [a for t, a in tags if t == "div" and a.get("class") == "panel"]
    assert [(p["data-value"], "hidden" in p) for p in panels] == [("0", False), ("1", True)]
    assert [a["value"] for t, a in tags if t == "option"] == ["0", "1"]


def test_strip_colours_follow_matplotlib_rdylgn() -> None:
    cmap = matplotlib.colormaps["RdYlGn"]
    for snr, share in ((0.0, 0.0), (30.0, 0.5), (60.0, 1.0), (-5.0, 0.0), (99.0, 1.0),
                       (math.inf, 1.0)):
        red, green, blue = (int(v) for v in cmap(int(round(share * 255)), bytes=True)[:3])
        assert page.strip_color(snr, 0.0, 60.0) == f"#{red:02x}{green:02x}{blue:02x}"
    assert page.strip_color(math.nan, 0.0, 60.0) == "#999999"


def test_strip_marks_the_first_divergent_cell() -> None:
    tags = collect(page.render_report("t", sample_sections()))
    cells = [a for t, a in tags if t == "span" and "cell" in (a.get("class") or "")]
    assert [(c["data-layer"], c["class"]) for c in cells] == [
        ("c1", "cell"), ("c2", "cell broken first"), ("c3", "cell broken")]
    assert [c["data-snr"] for c in cells] == ["identical", "12.5 dB", "nan dB"]


def test_figure_display_size_enlarges_tiny_pictures_only() -> None:
    sections = [page.Section("s", "S", (page.Figure(picture(28, 28), "tiny"),
                                        page.Figure(picture(400, 100), "wide", max_side=200)))]
    images = [a for t, a in collect(page.render_report("t", sections)) if t == "img"]
    assert [(a["width"], a["height"], a.get("class")) for a in images] == [
        ("112", "112", "pixelated"), ("200", "50", None)]
