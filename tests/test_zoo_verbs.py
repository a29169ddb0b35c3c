"""Every verb of the command line on every zoo export (both exporters, the dynamic variants).

Each (model, exporter) file is exported once per session (``zoo_export``); each verb must exit
0 and write what it says. Sizes are small (32-64 px inputs, 2 optimisation steps) to keep the
whole file within a few minutes. Numbers are checked elsewhere (test_exports_wiring.py,
test_zoo.py); here the evidence is that no verb fails on a model people export today.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.conftest import run
from tests.conftest_zoo import ZooExport, zoo_export_fixture  # noqa: F401

pytest.importorskip("torch")
from tests import zoo  # noqa: E402

CAM_METHODS = ("grad_cam", "grad_cam_pp", "xgrad_cam", "hires_cam", "layer_cam", "eigen_cam",
               "score_cam", "ablation_cam", "occlusion")
BACKPROP_METHODS = ("saliency", "guided", "guided-gradcam")
#: Image-to-image models: CAM and backprop need a class score, which the CLI cannot pick there
#: (segmentation targets are library-only), so they must refuse with the reason.
CASES = [pytest.param(name, dynamo, False, id=f"{name}-{'dynamo' if dynamo else 'ts'}")
         for name in zoo.ZOO for dynamo in (False, True)]
CASES += [pytest.param(name, dynamo, True, id=f"{name}-{'dynamo' if dynamo else 'ts'}-dynamic")
          for name in zoo.DYNAMIC for dynamo in (False, True)]


def _ok(*args: object) -> str:
    result = run(*args, "--provider", "cpu") if args[0] not in ("filters",) else run(*args)
    assert result.exit_code == 0, f"featviz {args[0]} failed:\n{result.output}"
    return result.output


def _fp16(path: Path, out: Path) -> Path:
    """Write a float16 copy of the model (float32 inputs/outputs kept) with its weights inside."""
    from onnxconverter_common import float16

    model = onnx.load(str(path))
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    half.ir_version = model.ir_version
    onnx.save(half, str(out))
    return out


@pytest.fixture(scope="module", name="image_dir")
def image_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeded RGB pictures (the verbs resize them to each model's input)."""
    folder = tmp_path_factory.mktemp("zoo-images")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(
            folder / f"img{i}.png")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dynamo", "dynamic"), CASES)
def test_every_verb_exits_0(zoo_export: ZooExport, image_dir: Path, tmp_path: Path,
                            name: str, dynamo: bool, dynamic: bool) -> None:
    path = zoo_export(name, dynamo=dynamo, dynamic=dynamic)
    image = image_dir / "img0.png"
    size = () if not dynamic else ("--size", str(max(zoo.DYNAMIC[name])))
    info = json.loads(_ok("info", path, "--json"))
    assert any(lay["module"] for lay in info["layers"])
    _ok("predict", path, image, *size)
    _ok("filters", path, "--out", tmp_path / "filters")
    _ok("maps", path, image, "--all", "--out", tmp_path / "maps", *size)
    # image-output models (UNet, PixelShuffle) are explained as segmentation targets
    for method in CAM_METHODS:
        _ok("cam", path, image, "--method", method, "--out", tmp_path / f"cam-{method}", *size)
    for method in BACKPROP_METHODS:
        _ok("backprop", path, image, "--method", method, "--out", tmp_path / f"bp-{method}",
            *size)
    stats = tmp_path / "stats.json"
    _ok("stats", path, image_dir, "--json", stats, *size)
    assert json.loads(stats.read_text())["layers"]
    half = _fp16(path, tmp_path / "half.onnx")
    run_compare = run("compare", path, half, image_dir, "--provider-a", "cpu",
                      "--provider-b", "cpu", *size)
    assert run_compare.exit_code in (0, 1) and "Traceback" not in run_compare.output, (
        run_compare.output)
    layer = info["conv_layers"][0]["name"]
    _ok("maximize", path, "--layer", layer, "--channel", "0", "--steps", "2",
        "--out", tmp_path / "max", *size)
    _ok("invert", path, image, "--layer", layer, "--steps", "2", "--out", tmp_path / "inv",
        *size)
