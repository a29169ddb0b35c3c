"""Peak RSS of a ~100 MB external-data model: the plain session vs the rewritten sessions
(exposed activations, a gradient model), each in a fresh process.

The model is a stack of 3x3 convs whose weights (float32, ``--mb`` MB in all) live in
``model.onnx.data`` beside ``model.onnx``. Each case loads the model through ``Inspector`` and
runs one 64x64 input; the ratio column is peak RSS over the plain case's.

    python3 tools/bench/bench_external.py [--mb 100] [--folder /tmp/featviz-bench-external]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CASES = {
    "python + onnx_featviz imported": "",
    "plain session (model outputs)": "ins.outputs(x)",
    "rewritten: exposed activations": "ins.activations(x)",
    "rewritten: gradient (Grad-CAM)": "ins.cam(x, api.CamOptions(overlays=False))",
}
PROBE = """
import resource, sys, json
import numpy as np
from onnx_featviz import api
ins = api.Inspector(sys.argv[1], "cpu")
x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
{action}
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def build_model(folder: Path, megabytes: int) -> Path:
    """Write ``model.onnx`` + ``model.onnx.data``: convs of C channels totalling ``megabytes``."""
    channels, layers = 512, max(1, round(megabytes * 2**20 / (512 * 512 * 9 * 4)))
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w_in"], ["c0"], pads=[1] * 4)]
    inits = [numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3), np.float32)
                                     * 0.1, "w_in")]
    for i in range(layers):
        weight = (rng.standard_normal((channels, channels, 3, 3), np.float32)
                  / np.sqrt(channels * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes += [helper.make_node("Conv", [f"c{i}", f"w{i}"], [f"p{i}"], pads=[1] * 4),
                  helper.make_node("Relu", [f"p{i}"], [f"c{i + 1}"])]
    nodes += [helper.make_node("GlobalAveragePool", [f"c{layers}"], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["output"])]
    graph = helper.make_graph(
        nodes, "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    return path


def peak_mb(model: Path, action: str) -> float:
    """Peak RSS (MiB) of a fresh process that loads ``model`` and runs ``action``."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(action=action), str(model)],
                          check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/featviz-bench-external"))
    args = parser.parse_args()
    model = build_model(args.folder, args.mb)
    size = (model.parent / "model.onnx.data").stat().st_size / 2**20
    print(f"model.onnx.data: {size:.1f} MiB")
    results = {name: peak_mb(model, action) for name, action in CASES.items()}
    plain = results["plain session (model outputs)"]
    print(f"{'case':34s} {'peak RSS MiB':>12s} {'vs plain':>9s} {'over plain / data':>18s}")
    for name, mb in results.items():
        print(f"{name:34s} {mb:12.1f} {mb / plain:8.2f}x {(mb - plain) / size:17.2f}x")


if __name__ == "__main__":
    main()
