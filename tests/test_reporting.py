"""``build_report`` and ``featviz report``: what the page says, checked against independent
references (the ONNX graph read with ``onnx``, direct onnxruntime runs, the digits' own
classes), a strict HTML parser, and the written file. The browser checks are in
tests/test_report_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from onnx_featviz.errors import InputError
from onnx_featviz.inspector import PrepOptions
from onnx_featviz.reporting import ReportOptions, build_report, save_report
from onnx_featviz.structs import Progress
from tests.conftest import MODELS, run, shared_path

pytestmark = pytest.mark.slow  # loads models/ (STYLE.md section 7)

MNIST = MODELS / "mnist_cnn.onnx"
DIGITS = [MODELS / "samples" / f"digit_{d}.png" for d in (0, 4, 9)]
EXTERNAL = re.compile(r"(?i)\b(?:https?|ftp|wss?|file):|(?:src|href)\s*=\s*[\"']?//")


class Tables(HTMLParser):
    """Rows of every table by id, each <img>'s src and alt, and figure captions."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[tuple[str, str]] = []
        self.captions: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self._table = found.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append((found.get("src") or "", found.get("alt") or ""))
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption))
            self._caption = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._caption):
            if part is not None:
                part.append(data)


def parse(text: str) -> Tables:
    parser = Tables()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def mnist_page() -> str:
    return build_report(MNIST, DIGITS, ReportOptions(data=MODELS / "samples", provider="cpu"))


def digit_batch(paths: list[Path]) -> np.ndarray:
    """The MNIST input as its metadata says: gray 28x28, pixels / 255 (no mean, std 1)."""
    pixels = [np.asarray(Image.open(p).convert("L").resize((28, 28)), np.float32) / 255.0
              for p in paths]
    return np.stack(pixels)[:, None]


def reference_outputs(tensor: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, tensor)`` from onnxruntime on the model with ``tensor`` added as an output."""
    model = onnx.load(MNIST)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, value = session.run([model.graph.output[0].name, tensor],
                                {model.graph.input[0].name: batch})
    return np.asarray(logits), np.asarray(value)


def test_page_is_strict_html_with_no_external_url_and_decodable_images(mnist_page: str) -> None:
    html5lib = pytest.importorskip("html5lib", reason="html5lib is not installed (test extra)")
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(mnist_page)
    assert EXTERNAL.search(mnist_page) is None
    found = parse(mnist_page)
    assert len(found.images) > 20
    for src, alt in found.images:
        head, data = src.split(",", 1)
        assert head == "data:image/webp;base64", alt
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        assert min(image.size) > 0


def test_layer_table_lists_every_node_of_the_graph(mnist_page: str) -> None:
    nodes = onnx.load(MNIST).graph.node
    rows = parse(mnist_page).tables["layers"]
    assert rows[0] == ["#", "name", "op", "module", "shape", "layout", "activation", "params"]
    assert [(r[1], r[2]) for r in rows[1:]] == [(n.name, n.op_type) for n in nodes]
    inferred = onnx.shape_inference.infer_shapes(onnx.load(MNIST)).graph.value_info
    dims = next(v for v in inferred if v.name == "conv1").type.tensor_type.shape.dim
    shape = "x".join(d.dim_param or str(d.dim_value) for d in dims)
    conv1 = next(r for r in rows if r[1] == "conv1")
    assert conv1[4:] == [shape, "NCHW", "Relu -> relu1", f"{16 * 25 + 16:,}"]


def test_card_says_where_the_preprocessing_came_from(mnist_page: str) -> None:
    assert "from the model&#x27;s featviz.preprocess metadata" in mnist_page
    given = build_report(MNIST, DIGITS[:1], ReportOptions(
        prep=PrepOptions(preset="mnist"), methods=(), backprop=(), provider="cpu"))
    assert "given: preset &#x27;mnist&#x27;" in given


def test_predictions_name_each_digit_with_onnxruntime_probabilities(mnist_page: str) -> None:
    logits, _ = reference_outputs("relu1", digit_batch(DIGITS))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for index, digit in enumerate((0, 4, 9)):
        rows = parse(mnist_page).tables[f"pred-{index}"]
        assert rows[1][:2] == [str(digit), str(digit)]
        assert len(rows) == 6
        assert float(rows[1][2]) == pytest.approx(probs[index, digit], abs=1e-4)


def test_feature_maps_draw_the_most_active_channels_first(mnist_page: str) -> None:
    _, relu1 = reference_outputs("relu1", digit_batch(DIGITS))
    captions = [c for c in parse(mnist_page).captions if c.startswith("digit_")]
    for index, path in enumerate(DIGITS):
        means = relu1[index].reshape(16, -1).mean(1)
        order = sorted(range(16), key=lambda c: (-means[c], c))[:8]
        assert captions[index] == f"{path.name}: channels {', '.join(map(str, order))}..."


def test_cam_titles_name_class_probability_method_and_layer(mnist_page: str) -> None:
    logits, _ = reference_outputs("relu2", digit_batch(DIGITS))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    cams = [c for c in parse(mnist_page).captions if " at " in c]
    assert len(cams) == 6  # 3 digits x (grad_cam, grad_cam_pp), side by side per digit
    for index, digit in enumerate((0, 4, 9)):
        p = f"{probs[index, digit]:.3f}"
        assert cams[2 * index:2 * index + 2] == [
            f"{digit} (p={p}), grad_cam at relu2", f"{digit} (p={p}), grad_cam_pp at relu2"]
    captions = parse(mnist_page).captions
    assert [c for c in captions if c.endswith("(top-1 class)")][:2] == [
        "saliency (top-1 class)", "guided (top-1 class)"]


def test_stats_section_covers_each_conv_activation(mnist_page: str) -> None:
    rows = parse(mnist_page).tables["stats"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("relu1", "Relu", "16"),
                                                      ("relu2", "Relu", "32")]
    assert "10 input(s):" in mnist_page  # the 10 sample digits of --data


def test_progress_reports_each_section_once() -> None:
    seen: list[Progress] = []
    build_report(MNIST, DIGITS[:1], ReportOptions(methods=("eigen_cam",), backprop=(),
                                                  provider="cpu"), progress=seen.append)
    assert [(p.done, p.total, p.unit) for p in seen] == [(i, 5, "section") for i in range(1, 6)]
    assert [p.status for p in seen] == ["model card", "predictions", "filters", "feature maps",
                                        "CAMs (eigen_cam)"]


@pytest.mark.parametrize(("options", "message"), [
    (ReportOptions(compare=MNIST), "a comparison needs a dataset"),
    (ReportOptions(backprop=("sailency",)), "unknown backprop view sailency; choose from"),
    (ReportOptions(image_format="gif"), "unknown image format 'gif'"),
    (ReportOptions(top_channels=0), "top_channels must be at least 1, got 0"),
])
def test_bad_options_are_refused_before_any_run(options: ReportOptions, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_report(MNIST, DIGITS, options)


def test_save_replaces_the_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    out.write_text("old")
    assert save_report("<!DOCTYPE html><p>new</p>", out) == out
    assert out.read_text() == "<!DOCTYPE html><p>new</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_cli_writes_the_page_and_prints_its_path(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "page.html"
    result = run("report", MNIST, *DIGITS[:2], "--methods", "grad_cam", "--backprop", "",
                 "--layer", "conv2", "--provider", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    text = out.read_text()
    found = parse(text)
    assert [c for c in found.captions if " at " in c][0].endswith("grad_cam at relu2")
    assert 'id="backprop"' not in text and 'id="stats"' not in text
    assert text.count('class="panel"') == 1  # only the chosen layer in the picker


def test_cli_compare_without_data_takes_the_one_images_argument(tmp_path: Path) -> None:
    out = tmp_path / "page.html"
    result = run("report", MNIST, MODELS / "samples", "--compare", MNIST, "--methods", "",
                 "--backprop", "", "--provider", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "no layer breaks the thresholds" in text
    assert text.count('class="cell"') == 2  # conv1 and conv2, identical


def test_cli_compare_with_several_images_asks_for_data(tmp_path: Path) -> None:
    result = run("report", MNIST, *DIGITS[:2], "--compare", MNIST, "--out",
                 tmp_path / "page.html")
    assert result.exit_code == 1
    assert "a comparison needs a dataset" in result.output
    assert not (tmp_path / "page.html").exists()


def test_squeezenet_report_of_four_photos_stays_small(tmp_path: Path) -> None:
    model = shared_path("models", "squeezenet1.1_caffe2_fp16.onnx")
    photos = shared_path("images")
    labels = shared_path("imagenet_classes.txt")
    out = tmp_path / "squeezenet.html"
    result = run("report", model, photos, "--preset", "caffe", "--labels", labels, "--data",
                 photos, "--provider", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    size = out.stat().st_size
    assert size < 10 * 2**20, f"{size / 2**20:.1f} MB"
    found = parse(out.read_text())
    assert len(found.tables["layers"]) - 1 == len(onnx.load(model).graph.node)
    assert json.dumps(found.tables["pred-0"]).count("cat") >= 1  # cat_chelsea.png
