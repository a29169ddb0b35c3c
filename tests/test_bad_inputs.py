"""Bad inputs across every verb (issue 14): one stderr line, the right exit code, no traceback,
no new file in the output folder (except a documented partial manifest), inputs unchanged.

The table runs in-process with ``CliRunner``; the memory bombs and Ctrl-C run as child
processes (``python -m onnx_featviz``) whose peak RSS is read with ``resource.getrusage``
(``RUSAGE_CHILDREN`` of a small wrapper process, so earlier children do not count).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_featviz.cli.commands import main
from tools import fuzz_cases as fc

REPO = Path(__file__).resolve().parents[1]
_GIB = 2**30
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and sockets")


# -- the inputs -------------------------------------------------------------------------------
def _nan_model() -> onnx.ModelProto:
    """x(1,1,8,8) -> Conv(-1 weights) -> Log -> GlobalAveragePool -> Flatten -> y(1,2): NaN
    scores for any positive input (the log of a negative number)."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Log", ["c"], ["l"], name="log"),
         helper.make_node("GlobalAveragePool", ["l"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["y"], name="flat")],
        "nan_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(-np.ones((2, 1, 3, 3), np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _other_model() -> onnx.ModelProto:
    """x(1,1,8,8) -> GlobalMaxPool -> Flatten -> other(1,1): shares no tensor with
    ``fc.conv_classifier`` (so ``compare`` has nothing to compare)."""
    graph = helper.make_graph(
        [helper.make_node("GlobalMaxPool", ["x"], ["q"], name="gmp"),
         helper.make_node("Flatten", ["q"], ["other"], name="flat2")],
        "other", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _broken_models() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Two models onnx loads but onnxruntime refuses: ``fc.conv_classifier`` with a rank-3
    weight (refused when the session opens), and x(N,1,H,W) -> Reshape([7]) (fails on run)."""
    bad_weight = fc.conv_classifier()
    for tensor in bad_weight.graph.initializer:
        if tensor.name == "w":
            tensor.CopyFrom(numpy_helper.from_array(np.ones((4, 1, 9), np.float32), "w"))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        "reshape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([7], np.int64), "shape")])
    reshape = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8)
    return bad_weight, reshape


def _huge_model() -> onnx.ModelProto:
    """``fc.dynamic_conv`` declaring a fixed 1x3x100000x100000 input (120 GB of float32)."""
    model = fc.dynamic_conv()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, 100_000, 100_000), strict=True):
        dim.dim_value = value
    return model


def _write_inputs(root: Path) -> dict[str, str]:
    """Write every input file under ``root``; return placeholder name -> path."""
    onnx.save(fc.conv_classifier(), root / "m.onnx")
    onnx.save(fc.dynamic_conv(), root / "dyn.onnx")
    onnx.save(_nan_model(), root / "nan.onnx")
    onnx.save(_other_model(), root / "other.onnx")
    onnx.save(_huge_model(), root / "huge.onnx")
    bad_weight, reshape = _broken_models()
    onnx.save(bad_weight, root / "badweight.onnx")
    onnx.save(reshape, root / "reshape.onnx")
    (root / "mnist.onnx").write_bytes(fc.MNIST.read_bytes())
    os.link(root / "m.onnx", root / "m_hardlink.onnx")
    os.symlink(root / "m.onnx", root / "m_symlink.onnx")
    os.symlink(root / "loop", root / "loop")
    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(pixels).save(root / "img.png")
    Image.new("L", (80000, 1)).save(root / "wide.png")  # 157 bytes
    Image.new("RGB", (2, 60000)).save(root / "tall.png")
    (root / "bad.png").write_bytes(b"not a png at all")
    (root / "empty.png").write_bytes(b"")
    (root / "text.onnx").write_text("this is not a model\n")
    (root / "trunc.onnx").write_bytes((root / "m.onnx").read_bytes()[:100])
    (root / "labels.txt").write_text("a\nb\nc\n")
    (root / "latin1.txt").write_bytes(b"caf\xe9\n\xff\xfe\n")
    np.save(root / "bank.npy", np.ones((2, 1, 3, 3), np.float32))
    np.save(root / "bank_nan.npy", np.full((2, 1, 3, 3), np.nan, np.float32))
    np.save(root / "bank_1d.npy", np.ones(5, np.float32))
    np.save(root / "data.npy", np.zeros((4, 1, 8, 8), np.float32))
    np.save(root / "wrong.npy", np.zeros((4, 5), np.float32))
    header = io.BytesIO()  # declares 4 TB of float32 in a 144-byte file
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    (root / "bomb.npy").write_bytes(header.getvalue() + bytes(16))
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    for name, files in (("mixed", ("img.png", "bad.png")), ("junk", ("bad.png", "empty.png")),
                        ("bigmix", ("img.png", "wide.png"))):
        (root / name).mkdir()
        for file in files:
            (root / name / file).write_bytes((root / file).read_bytes())
    (root / "nothing").mkdir()
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))  # left bound: a socket node on disk
    return {p.name.replace(".", "_"): str(p) for p in root.iterdir()} | {"root": str(root)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _write_inputs(tmp_path_factory.mktemp("inputs"))


def _hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` (the inputs, byte for byte)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- the table --------------------------------------------------------------------------------
P = ("--provider", "cpu")
PAB = ("--provider-a", "cpu", "--provider-b", "cpu")
MAX = ("maximize", "{m_onnx}", "--layer", "conv", "--steps", "1", "--out", "{out}/o", *P)
INV = ("invert", "{m_onnx}", "{img_png}", "--layer", "conv", "--steps", "1", "--out", "{out}/o",
       *P)
OCC = ("cam", "{m_onnx}", "{img_png}", "--method", "occlusion", "--out", "{out}/o", *P)

#: (id, argv, exit code); every case: one stderr line, no output file, inputs unchanged.
CASES: list[tuple[str, tuple[str, ...], int]] = [
    # info: models that are not regular files or not models
    ("info-fifo", ("info", "{fifo}", *P), 1),
    ("info-dev-zero", ("info", "/dev/zero", *P), 1),
    ("info-socket", ("info", "{sock}", *P), 1),
    ("info-folder", ("info", "{nothing}", *P), 1),
    ("info-missing", ("info", "{root}/absent.onnx", *P), 1),
    ("info-symlink-loop", ("info", "{loop}", *P), 1),
    ("info-text", ("info", "{text_onnx}", *P), 1),
    ("info-truncated", ("info", "{trunc_onnx}", *P), 1),
    ("info-empty", ("info", "{empty_png}", *P), 1),
    ("info-image-as-model", ("info", "{img_png}", *P), 1),
    ("info-unknown-option", ("info", "{m_onnx}", "--bogus"), 2),
    ("info-bad-preset", ("info", "{m_onnx}", "--preset", "nope"), 2),
    ("info-size-nan", ("info", "{dyn_onnx}", "--size", "nan", *P), 2),
    # predict
    ("predict-fifo-image", ("predict", "{m_onnx}", "{fifo}", *P), 1),
    ("predict-dev-zero-image", ("predict", "{m_onnx}", "/dev/zero", *P), 1),
    ("predict-socket-image", ("predict", "{m_onnx}", "{sock}", *P), 1),
    ("predict-not-an-image", ("predict", "{m_onnx}", "{bad_png}", *P), 1),
    ("predict-empty-image", ("predict", "{m_onnx}", "{empty_png}", *P), 1),
    ("predict-empty-folder", ("predict", "{m_onnx}", "{nothing}", *P), 1),
    ("predict-junk-folder", ("predict", "{m_onnx}", "{junk}", *P), 1),
    ("predict-size-huge", ("predict", "{dyn_onnx}", "{img_png}", "--size", "100000", *P), 2),
    ("predict-size-zero", ("predict", "{dyn_onnx}", "{img_png}", "--size", "0", *P), 2),
    ("predict-size-text", ("predict", "{dyn_onnx}", "{img_png}", "--size", "big", *P), 2),
    ("predict-top-k-zero", ("predict", "{m_onnx}", "{img_png}", "--top-k", "0", *P), 2),
    ("predict-labels-fifo", ("predict", "{m_onnx}", "{img_png}", "--labels", "{fifo}", *P), 1),
    ("predict-labels-dev-zero", ("predict", "{m_onnx}", "{img_png}", "--labels", "/dev/zero",
                                 *P), 1),
    ("predict-labels-missing", ("predict", "{m_onnx}", "{img_png}", "--labels",
                                "{root}/absent.txt", *P), 1),
    ("predict-labels-not-utf8", ("predict", "{m_onnx}", "{img_png}", "--labels",
                                 "{latin1_txt}", *P), 1),
    ("predict-mean-nan", ("predict", "{m_onnx}", "{img_png}", "--mean", "nan", *P), 2),
    ("predict-std-inf", ("predict", "{m_onnx}", "{img_png}", "--std", "inf", *P), 2),
    ("predict-scale-nan", ("predict", "{m_onnx}", "{img_png}", "--scale", "nan", *P), 2),
    ("predict-huge-model", ("predict", "{huge_onnx}", "{img_png}", *P), 1),
    ("predict-npy-wrong-shape", ("predict", "{m_onnx}", "{wrong_npy}", *P), 1),
    ("predict-npy-corrupt", ("predict", "{m_onnx}", "{corrupt_npy}", *P), 1),
    ("predict-npy-header-bomb", ("predict", "{m_onnx}", "{bomb_npy}", *P), 1),
    ("predict-model-is-image", ("predict", "{img_png}", "{img_png}", *P), 1),
    ("predict-onnxruntime-refuses-model", ("predict", "{badweight_onnx}", "{img_png}", *P), 1),
    ("predict-onnxruntime-fails-on-run", ("predict", "{reshape_onnx}", "{img_png}", *P), 1),
    ("maps-onnxruntime-fails-on-run", ("maps", "{reshape_onnx}", "{img_png}", "--all", "--out",
                                       "{out}/o", *P), 1),
    # filters
    ("filters-fifo-model", ("filters", "{fifo}", "--out", "{out}/o"), 1),
    ("filters-out-is-model", ("filters", "{m_onnx}", "--out", "{m_onnx}"), 2),
    ("filters-npz-is-model", ("filters", "{m_onnx}", "--out", "{out}/o", "--save-npz",
                              "{m_onnx}"), 2),
    ("filters-npz-is-hardlink", ("filters", "{m_onnx}", "--out", "{out}/o", "--save-npz",
                                 "{m_hardlink_onnx}"), 2),
    ("filters-unknown-layer", ("filters", "{m_onnx}", "--layer", "nope", "--out", "{out}/o"), 1),
    ("filters-no-conv", ("filters", "{other_onnx}", "--out", "{out}/o"), 1),
    ("filters-out-under-file", ("filters", "{m_onnx}", "--out", "{img_png}/sub"), 1),
    ("filters-npz-dev-null", ("filters", "{m_onnx}", "--out", "{out}/o", "--save-npz",
                              "/dev/null"), 1),
    # maps
    ("maps-npz-is-model", ("maps", "{m_onnx}", "{img_png}", "--out", "{out}/o", "--save-npz",
                           "{m_onnx}", *P), 2),
    ("maps-npz-is-image", ("maps", "{m_onnx}", "{img_png}", "--out", "{out}/o", "--save-npz",
                           "{img_png}", *P), 2),
    ("maps-out-is-image", ("maps", "{m_onnx}", "{img_png}", "--layer", "conv", "--out",
                           "{img_png}", *P), 2),
    ("maps-npz-is-symlinked-model", ("maps", "{m_symlink_onnx}", "{img_png}", "--out",
                                     "{out}/o", "--save-npz", "{m_onnx}", *P), 2),
    ("maps-npz-in-image-folder", ("maps", "{m_onnx}", "{mixed}", "--out", "{out}/o",
                                  "--save-npz", "{mixed}/img.png", *P), 2),
    ("maps-channels-text", ("maps", "{m_onnx}", "{img_png}", "--channels", "x", "--out",
                            "{out}/o", *P), 2),
    ("maps-unknown-layer", ("maps", "{m_onnx}", "{img_png}", "--layer", "nope", "--out",
                            "{out}/o", *P), 1),
    ("maps-fifo-image", ("maps", "{m_onnx}", "{fifo}", "--out", "{out}/o", *P), 1),
    ("maps-dev-zero-image", ("maps", "{m_onnx}", "/dev/zero", "--out", "{out}/o", *P), 1),
    ("maps-junk-folder", ("maps", "{m_onnx}", "{junk}", "--out", "{out}/o", *P), 1),
    ("maps-name-too-long", ("maps", "{m_onnx}", "{img_png}", "--out", "{out}/" + "x" * 300,
                            *P), 1),
    ("maps-npz-dev-null", ("maps", "{m_onnx}", "{img_png}", "--out", "{out}/o", "--save-npz",
                           "/dev/null", *P), 1),
    ("maps-huge-model", ("maps", "{huge_onnx}", "{img_png}", "--out", "{out}/o", *P), 1),
    # build-conv
    ("build-conv-out-is-input", ("build-conv", "{bank_npy}", "--out", "{bank_npy}"), 2),
    ("build-conv-out-is-hardlink", ("build-conv", "{m_onnx}", "--out", "{m_hardlink_onnx}"), 2),
    ("build-conv-fifo", ("build-conv", "{fifo}", "--out", "{out}/b.onnx"), 1),
    ("build-conv-nan-bank", ("build-conv", "{bank_nan_npy}", "--out", "{out}/b.onnx"), 1),
    ("build-conv-1d-bank", ("build-conv", "{bank_1d_npy}", "--out", "{out}/b.onnx"), 1),
    ("build-conv-text-bank", ("build-conv", "{labels_txt}", "--out", "{out}/b.onnx"), 1),
    ("build-conv-both", ("build-conv", "{bank_npy}", "--preset", "edges", "--out",
                         "{out}/b.onnx"), 2),
    ("build-conv-out-dev-null", ("build-conv", "--preset", "edges", "--out", "/dev/null"), 1),
    # cam
    ("cam-fill-nan", (*OCC, "--fill", "nan"), 2),
    ("cam-fill-inf", (*OCC, "--fill", "-inf"), 2),
    ("cam-stride-over-input", (*OCC, "--window", "2", "--stride", "100"), 1),
    ("cam-window-over-input", (*OCC, "--window", "100"), 1),
    ("cam-stride-zero", (*OCC, "--stride", "0"), 2),
    ("cam-alpha-nan", ("cam", "{m_onnx}", "{img_png}", "--alpha", "nan", "--out", "{out}/o",
                       *P), 2),
    ("cam-unknown-method", ("cam", "{m_onnx}", "{img_png}", "--method", "nope", "--out",
                            "{out}/o", *P), 1),
    ("cam-target-out-of-range", ("cam", "{m_onnx}", "{img_png}", "--target", "99", "--out",
                                 "{out}/o", *P), 1),
    ("cam-unknown-label", ("cam", "{m_onnx}", "{img_png}", "--target", "zebra", "--out",
                           "{out}/o", *P), 1),
    ("cam-labels-fifo", ("cam", "{m_onnx}", "{img_png}", "--labels", "{fifo}", "--out",
                         "{out}/o", *P), 1),
    ("cam-npz-is-labels", ("cam", "{m_onnx}", "{img_png}", "--labels", "{labels_txt}",
                           "--out", "{out}/o", "--save-npz", "{labels_txt}", *P), 2),
    ("cam-batch-zero", ("cam", "{m_onnx}", "{img_png}", "--batch", "0", "--out", "{out}/o",
                        *P), 2),
    ("cam-unknown-layer", ("cam", "{m_onnx}", "{img_png}", "--layer", "nope", "--out",
                           "{out}/o", *P), 1),
    ("cam-unknown-score", ("cam", "{m_onnx}", "{img_png}", "--score", "nope", "--out",
                           "{out}/o", *P), 1),
    ("cam-junk-folder", ("cam", "{m_onnx}", "{junk}", "--out", "{out}/o", *P), 1),
    # backprop
    ("backprop-unknown-method", ("backprop", "{m_onnx}", "{img_png}", "--method", "nope",
                                 "--out", "{out}/o", *P), 2),
    ("backprop-fifo-image", ("backprop", "{m_onnx}", "{fifo}", "--out", "{out}/o", *P), 1),
    ("backprop-unknown-label", ("backprop", "{m_onnx}", "{img_png}", "--target", "zebra",
                                "--out", "{out}/o", *P), 1),
    ("backprop-out-is-model", ("backprop", "{m_onnx}", "{img_png}", "--out", "{m_onnx}",
                               *P), 2),
    ("backprop-junk-folder", ("backprop", "{m_onnx}", "{junk}", "--out", "{out}/o", *P), 1),
    # compare
    ("compare-nothing-compared", ("compare", "{m_onnx}", "{other_onnx}", "{img_png}", *PAB), 1),
    ("compare-json-is-model", ("compare", "{m_onnx}", "{m_onnx}", "{img_png}", "--json",
                               "{m_onnx}", *PAB), 2),
    ("compare-plot-is-data", ("compare", "{m_onnx}", "{m_onnx}", "{img_png}", "--plot",
                              "{img_png}", *PAB), 2),
    ("compare-json-is-model-b", ("compare", "{m_onnx}", "{m_symlink_onnx}", "{data_npy}",
                                 "--json", "{m_symlink_onnx}", *PAB), 2),
    ("compare-min-snr-nan", ("compare", "{m_onnx}", "{m_onnx}", "{img_png}", "--min-snr",
                             "nan", *PAB), 2),
    ("compare-min-cosine-2", ("compare", "{m_onnx}", "{m_onnx}", "{img_png}", "--min-cosine",
                              "2", *PAB), 2),
    ("compare-fifo-data", ("compare", "{m_onnx}", "{m_onnx}", "{fifo}", *PAB), 1),
    ("compare-dev-zero-data", ("compare", "{m_onnx}", "{m_onnx}", "/dev/zero", *PAB), 1),
    ("compare-fifo-model-b", ("compare", "{m_onnx}", "{fifo}", "{img_png}", *PAB), 1),
    ("compare-model-b-refused", ("compare", "{m_onnx}", "{badweight_onnx}", "{img_png}", *PAB),
     1),
    ("compare-model-a-fails-on-run", ("compare", "{reshape_onnx}", "{m_onnx}", "{img_png}",
                                      "--layers", "all", *PAB), 1),
    ("compare-different-inputs", ("compare", "{m_onnx}", "{dyn_onnx}", "{img_png}", *PAB), 1),
    ("compare-batch-zero", ("compare", "{m_onnx}", "{m_onnx}", "{img_png}", "--batch", "0",
                            *PAB), 2),
    ("compare-junk-folder", ("compare", "{m_onnx}", "{m_onnx}", "{junk}", *PAB), 1),
    ("compare-unknown-layer", ("compare", "{m_onnx}", "{m_onnx}", "{img_png}", "--layers",
                               "nope", *PAB), 1),
    # stats
    ("stats-json-is-model", ("stats", "{m_onnx}", "{img_png}", "--json", "{m_onnx}", *P), 2),
    ("stats-json-file-is-model", ("stats", "{m_onnx}", "{img_png}", "--json-file", "{m_onnx}",
                                  *P), 2),
    ("stats-json-is-data", ("stats", "{m_onnx}", "{data_npy}", "--json", "{data_npy}", *P), 2),
    ("stats-plot-in-data-folder", ("stats", "{m_onnx}", "{mixed}", "--plot",
                                   "{mixed}/img.png", *P), 2),
    ("stats-fifo-data", ("stats", "{m_onnx}", "{fifo}", *P), 1),
    ("stats-dev-zero-data", ("stats", "{m_onnx}", "/dev/zero", *P), 1),
    ("stats-socket-data", ("stats", "{m_onnx}", "{sock}", *P), 1),
    ("stats-saturation-nan", ("stats", "{m_onnx}", "{img_png}", "--saturation", "nan", *P), 2),
    ("stats-saturation-zero", ("stats", "{m_onnx}", "{img_png}", "--saturation", "0", *P), 2),
    ("stats-fail-on-unknown", ("stats", "{m_onnx}", "{img_png}", "--fail-on", "bogus", *P), 2),
    ("stats-npy-header-bomb", ("stats", "{m_onnx}", "{bomb_npy}", *P), 1),
    ("stats-unknown-layer", ("stats", "{m_onnx}", "{img_png}", "--layers", "nope", *P), 1),
    ("stats-gpus-nan", ("stats", "{m_onnx}", "{img_png}", "--gpus-per-worker", "nan", *P), 2),
    # maximize
    ("maximize-seed-negative", (*MAX, "--seed", "-1"), 2),
    ("maximize-lr-inf", (*MAX, "--lr", "inf"), 2),
    ("maximize-lr-nan", (*MAX, "--lr", "nan"), 2),
    ("maximize-diversity-nan", (*MAX, "--diversity", "nan"), 2),
    ("maximize-npz-is-model", (*MAX, "--save-npz", "{m_onnx}"), 2),
    ("maximize-out-is-model", ("maximize", "{m_onnx}", "--layer", "conv", "--out", "{m_onnx}",
                               *P), 2),
    ("maximize-unknown-layer", ("maximize", "{m_onnx}", "--layer", "nope", "--out", "{out}/o",
                                *P), 1),
    ("maximize-steps-zero", (*MAX, "--steps", "0"), 2),
    ("maximize-fifo-model", ("maximize", "{fifo}", "--layer", "conv", "--out", "{out}/o", *P),
     1),
    # invert
    ("invert-tv-nan", (*INV, "--tv", "nan"), 2),
    ("invert-lr-inf", (*INV, "--lr", "inf"), 2),
    ("invert-seed-negative", (*INV, "--seed", "-1"), 2),
    ("invert-npz-is-image", (*INV, "--save-npz", "{img_png}"), 2),
    ("invert-fifo-image", ("invert", "{m_onnx}", "{fifo}", "--layer", "conv", "--steps", "1",
                           "--out", "{out}/o", *P), 1),
    ("invert-dev-zero-image", ("invert", "{m_onnx}", "/dev/zero", "--layer", "conv", "--steps",
                               "1", "--out", "{out}/o", *P), 1),
    ("invert-unknown-layer", ("invert", "{m_onnx}", "{img_png}", "--layer", "nope", "--out",
                              "{out}/o", *P), 1),
]


#: An argument in a case, and what its one line must then say.
_SAYS = {"{fifo}": "named pipe (FIFO)", "/dev/zero": "character device", "{sock}": "a socket",
         "nan": "finite", "inf": "finite", "-inf": "finite", "100000": "FEATVIZ_MAX_PIXELS"}


def _argv(args: tuple[str, ...], paths: dict[str, str], out: Path) -> list[str]:
    return [a.format(**paths, out=out) for a in args]


def _invoke(argv: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, argv, env=env)


#: A progress-bar line (``compare [####] 1/1 images 72.8/s ETA 0:00``): not a message.
_PROGRESS = re.compile(r"^[\w /.-]+ (\[[# ]*\] )?\d+(/\d+)? \w+ [\d.]+/s")


def _messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]


def _one_line(stderr: str) -> str:
    lines = _messages(stderr)
    assert len(lines) == 1, lines
    assert "Traceback" not in stderr
    return lines[0]


def test_the_table_is_large_and_distinct() -> None:
    assert len(CASES) >= 80
    assert len({name for name, _, _ in CASES}) == len(CASES)
    assert len({args for _, args, _ in CASES}) == len(CASES)
    verbs = {args[0] for _, args, _ in CASES}
    assert verbs >= {"info", "predict", "filters", "maps", "build-conv", "cam", "backprop",
                     "compare", "stats", "maximize", "invert"}


@pytest.mark.parametrize(("args", "code"), [pytest.param(a, c, id=n) for n, a, c in CASES])
def test_bad_input(inputs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   args: tuple[str, ...], code: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)  # a default output folder would land here too
    root = Path(inputs["root"])
    before = _hashes(root)
    result = _invoke(_argv(args, inputs, out))
    assert result.exit_code == code, (result.stdout, result.stderr)
    if "FAIL: no tensors were compared" in result.stdout:  # the verdict says why
        assert _messages(result.stderr) == []
    else:
        line = _one_line(result.stderr)
        assert line.startswith(("Error: ", "featviz: ")), line
        assert "internal error" not in line, line  # a known bad input is not a bug
        for needle, phrase in _SAYS.items():
            if needle in args:
                assert phrase in line, (phrase, line)
    assert "Traceback" not in result.stdout
    assert _files(out) == []
    assert _hashes(root) == before


@pytest.mark.parametrize(("args", "model"), [
    (("predict", "{badweight_onnx}", "{img_png}", *P), "model badweight.onnx"),
    (("predict", "{reshape_onnx}", "{img_png}", *P), "model reshape.onnx"),
    (("compare", "{m_onnx}", "{badweight_onnx}", "{img_png}", *PAB), "model B (badweight.onnx)"),
    (("compare", "{badweight_onnx}", "{m_onnx}", "{img_png}", *PAB), "model A (badweight.onnx)"),
])
def test_onnxruntime_errors_name_the_model_without_cxx_noise(
        inputs: dict[str, str], tmp_path: Path, args: tuple[str, ...], model: str) -> None:
    result = _invoke(_argv(args, inputs, tmp_path))
    line = _one_line(result.stderr)
    assert result.exit_code == 1 and "onnxruntime" in line and model in line, line
    for noise in ("::", ".cc:", "[ONNXRuntimeError]", "[E:onnxruntime"):
        assert noise not in line, line
    assert "; check" in line  # names the fix


# -- results that need a notice, folders that skip and count ------------------------------------
def test_nonfinite_scores_are_reported(inputs: dict[str, str]) -> None:
    result = _invoke(["predict", inputs["nan_onnx"], inputs["img_png"], *P])
    assert result.exit_code == 0, result.stderr
    # besides the one notice, only the (successful) run's assumed-preprocessing notice
    lines = [ln for ln in _messages(result.stderr) if "no preprocessing metadata" not in ln]
    assert len(lines) == 1 and "NaN or Inf" in lines[0] and "Traceback" not in result.stderr


def test_nonfinite_stats_are_reported(inputs: dict[str, str]) -> None:
    result = _invoke(["stats", inputs["nan_onnx"], inputs["img_png"], "--layers", "all", *P])
    assert result.exit_code == 0, result.stderr
    assert "nan" in result.stdout.lower() or "non-finite" in result.stdout.lower()


@pytest.mark.parametrize("verb", ["predict", "maps", "cam", "backprop"])
def test_folder_skips_and_counts_unreadable_files(inputs: dict[str, str], tmp_path: Path,
                                                  verb: str) -> None:
    extra = [] if verb == "predict" else ["--out", str(tmp_path / "o")]
    result = _invoke([verb, inputs["m_onnx"], inputs["mixed"], *extra, *P])
    assert result.exit_code == 0, result.stderr
    assert "skipped 1 of 2 input files" in _one_line(result.stderr)


def test_stats_folder_skips_an_image_too_large_after_the_resize(inputs: dict[str, str]) -> None:
    env = {"FEATVIZ_MAX_PIXELS": "100000"}  # the 80000x1 PNG covers 8x8 at 640000x8 pixels
    result = _invoke(["stats", inputs["m_onnx"], inputs["bigmix"], *P], env=env)
    assert _invoke(["stats", inputs["m_onnx"], inputs["bigmix"], *P]).exit_code == 0
    assert result.exit_code == 0, result.stderr
    assert "1 inputs (1 skipped)" in result.stdout, result.stdout
    assert "skipped 1 of 2 inputs" in _one_line(result.stderr)


@pytest.mark.parametrize(("args", "env", "code"), [
    ((*OCC, "--window", "1", "--stride", "1"), {"FEATVIZ_MAX_WINDOWS": "10"}, 1),
    (("predict", "{m_onnx}", "{img_png}", *P), {"FEATVIZ_MAX_BYTES": "1000"}, 1),
    (("predict", "{m_onnx}", "{img_png}", *P), {"FEATVIZ_MAX_PIXELS": "63"}, 1),
    ((*MAX, "--channel", "0", "--images", "3"), {"FEATVIZ_MAX_IMAGES": "2"}, 2),
    (("predict", "{m_onnx}", "{img_png}", *P), {"FEATVIZ_MAX_PIXELS": "lots"}, 1),
], ids=["windows", "bytes", "pixels", "images", "unreadable-variable"])
def test_each_limit_names_its_variable(inputs: dict[str, str], tmp_path: Path,
                                       args: tuple[str, ...], env: dict[str, str],
                                       code: int) -> None:
    result = _invoke(_argv(args, inputs, tmp_path), env=env)
    assert result.exit_code == code, result.stderr
    assert next(iter(env)) in _one_line(result.stderr)
    assert _files(tmp_path) == []


# -- unexpected errors and interrupts -------------------------------------------------------
def test_an_unexpected_error_is_one_line_naming_the_bug(inputs: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx_featviz import api

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(api, "describe", broken)
    result = _invoke(["info", inputs["m_onnx"], *P])
    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert "bug" in line and "ZeroDivisionError" in line and "--debug" in line
    debug = _invoke(["--debug", "info", inputs["m_onnx"], *P])
    assert isinstance(debug.exception, ZeroDivisionError)


@pytest.mark.parametrize("verb", [
    ("maps", "{m_onnx}", "{img_png}", "--stage", "both", *P),
    ("cam", "{m_onnx}", "{img_png}", *P),
    ("filters", "{mnist_onnx}"),
], ids=["maps", "cam", "filters"])
def test_an_interrupted_run_writes_a_partial_manifest(
        inputs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        verb: tuple[str, ...]) -> None:
    from onnx_featviz.io import files as fileio

    def save_one_then_stop(images: dict[Path, Image.Image]) -> None:
        path, image = next(iter(images.items()))
        fileio.save_image(image, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio, "save_images", save_one_then_stop)
    out = tmp_path / "o"
    result = _invoke([*_argv(verb, inputs, tmp_path), "--out", str(out)])
    assert result.exit_code == 130, result.stderr
    assert "partial" in _one_line(result.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["partial"] is True and len(manifest["written"]) == 1
    assert Path(manifest["written"][0]).is_file()
    assert len([p for p in out.rglob("*") if p.is_file()]) == 2  # the picture and the manifest


def test_nonfinite_objectives_are_reported(inputs: dict[str, str], tmp_path: Path) -> None:
    result = _invoke(["maximize", inputs["nan_onnx"], "--layer", "log", "--steps", "2",
                      "--json", "--out", str(tmp_path / "o"), *P])
    assert result.exit_code == 0, result.stderr
    assert "NaN or Inf" in _one_line(result.stderr)


# -- child processes: memory bombs and Ctrl-C -----------------------------------------------
_WRAPPER = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "peak": peak}))
"""

#: (id, argv, exit code): each would allocate gigabytes without its guard.
BOMBS: list[tuple[str, tuple[str, ...], int]] = [
    ("predict-80000x1-png", ("predict", "{mnist_onnx}", "{wide_png}", *P), 0),
    ("predict-2x60000-png", ("predict", "{mnist_onnx}", "{tall_png}", *P), 0),
    ("predict-size-100000", ("predict", "{dyn_onnx}", "{img_png}", "--size", "100000", *P), 2),
    ("predict-declared-1x3x100000x100000", ("predict", "{huge_onnx}", "{img_png}", *P), 1),
    ("maximize-declared-1x3x100000x100000", ("maximize", "{huge_onnx}", "--layer", "conv",
                                             "--steps", "1", "--out", "{out}/o", *P), 1),
    ("maximize-tile-100000", (*MAX, "--tile", "100000"), 2),
    ("maximize-images-10000000", (*MAX, "--images", "10000000"), 2),
    ("cam-occlusion-window-count", ("cam", "{dyn_onnx}", "{img_png}", "--size", "1100",
                                    "--method", "occlusion", "--layer", "conv", "--window", "1",
                                    "--stride", "1", "--out", "{out}/o", *P), 1),
]


def _child(argv: list[str], cwd: Path) -> dict[str, Any]:
    command = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "onnx_featviz", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300, check=True)
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize(("args", "code"), [pytest.param(a, c, id=n) for n, a, c in BOMBS])
def test_memory_bomb(inputs: dict[str, str], tmp_path: Path, args: tuple[str, ...],
                     code: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    root = Path(inputs["root"])
    before = _hashes(root)
    got = _child(_argv(args, inputs, out), out)
    assert got["rc"] == code, got["stderr"]
    if code:
        _one_line(got["stderr"])
    assert "Traceback" not in got["stderr"]
    assert got["peak"] < _GIB, got["peak"]
    assert _files(out) == []
    assert _hashes(root) == before


@pytest.mark.parametrize("args", [
    ("predict", "{reshape_onnx}", "{img_png}", *P),
    ("compare", "{reshape_onnx}", "{m_onnx}", "{img_png}", "--layers", "all", *PAB),
], ids=["predict", "compare"])
def test_onnxruntime_log_lines_are_silenced(inputs: dict[str, str], tmp_path: Path,
                                            args: tuple[str, ...]) -> None:
    """onnxruntime logs to file descriptor 2 from C++, which only a child process shows."""
    got = _child(_argv(args, inputs, tmp_path), tmp_path)
    line = _one_line(got["stderr"])
    assert got["rc"] == 1 and "onnxruntime failed running model" in line, got["stderr"]


def _interrupt_after(argv: list[str], seconds: float, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen([sys.executable, "-m", "onnx_featviz", *argv], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        time.sleep(seconds)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=120)
    return child.returncode, stderr


@pytest.mark.parametrize("seconds", [0.4, 1.0, 2.0, 4.0])
def test_ctrl_c_at_any_moment_exits_130_with_one_line(inputs: dict[str, str], tmp_path: Path,
                                                      seconds: float) -> None:
    argv = _argv(("maximize", "{m_onnx}", "--layer", "conv", "--steps", "1000000", "--out",
                  "{out}/o", *P), inputs, tmp_path)
    code, stderr = _interrupt_after(argv, seconds, tmp_path)
    lines = [line for line in stderr.splitlines() if line.strip()
             and not line.startswith("maximize ")]  # progress lines are not errors
    assert code == 130, stderr
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    assert "Traceback" not in stderr


def test_ctrl_c_while_importing_exits_130_with_one_line() -> None:
    """The start-up handler ``run()`` installs before importing click, numpy and onnx (the
    seconds a loaded machine spends importing) ends the process with one line, no traceback."""
    code = ("import os, signal, time\n"
            "import onnx_featviz.__main__ as entry\n"
            "signal.signal(signal.SIGINT, entry._exit_at_once)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 130
    assert _one_line(done.stderr) == "featviz: interrupted while starting; nothing written"



def test_a_capture_over_free_memory_is_refused_before_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """small_cnn's c1 is (N, 4, 16, 16) float32 = 4 KiB a row (from the model's dims); 4 rows,
    counted twice, need 32 KiB: refused under a 16 KiB bound, run under a 64 KiB one."""
    from onnx_featviz import api
    from onnx_featviz.errors import InputError
    from tests import graphs

    batch = np.zeros((4, 3, 16, 16), np.float32)
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        assert inspector.info.layer("c1").shape[1:] == (4, 16, 16)
        monkeypatch.setenv("FEATVIZ_MAX_BYTES", str(16 * 1024))
        with pytest.raises(InputError, match=r"c1 .*needs 3\.05e-05 GiB.*FEATVIZ_MAX_BYTES"):
            inspector.capture(batch, ["c1"])
        monkeypatch.setenv("FEATVIZ_MAX_BYTES", str(64 * 1024))
        assert inspector.capture(batch, ["c1"])["c1"].shape == (4, 4, 16, 16)
