"""Peak RSS of a ~100 MB external-data model: the plain session vs the rewritten sessions
(exposed activations, a gradient model), each in a fresh process, imports not counted.

The model is a stack of 3x3 convs whose weights (float32, ``--mb`` MB in all) live in
``model.onnx.data`` beside ``model.onnx``. Each case loads the model through ``Inspector`` and
runs one 64x64 input, once with the large tensors left on disk (the default for models with
over ``inspector.KEEP_EXTERNAL_MODEL_BYTES`` of external data) and once with every weight
loaded into the proto (the behaviour before); ratios are over the plain session's peak.

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
    "Inspector only (model loaded)": "",
    "plain session (model outputs)": "ins.outputs(x)",
    "rewritten: exposed activations": "ins.activations(x)",
    "rewritten: gradient (Grad-CAM)": "ins.cam(x, api.CamOptions(overlays=False))",
}
PROBE = """
import sys, json
import numpy as np
from onnx_featviz import api
import onnx_featviz.inspector as inspection

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith(key))

with open("/proc/self/clear_refs", "w") as fh:  # reset the peak: imports are not measured
    fh.write("5")
before = status("VmRSS:")
if sys.argv[2] == "load":  # the behaviour before issue 13: every weight loaded into the proto
    inspection.KEEP_EXTERNAL_MODEL_BYTES = 1 << 62
ins = api.Inspector(sys.argv[1], "cpu")
x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
{action}
print(json.dumps(status("VmHWM:") - before))
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
    (folder / "model.onnx.data").unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    return path


def peak_mb(model: Path, action: str, mode: str) -> float:
    """Peak RSS growth (MiB) of a fresh process, after its imports, while it loads ``model``
    and runs ``action`` (Linux: VmHWM after resetting it through /proc/self/clear_refs)."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(action=action), str(model),
                           mode],
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
    print(f"{'case':34s} {'on disk MiB':>11s} {'vs plain':>8s} {'loaded MiB':>11s} "
          f"{'vs plain':>8s}")
    rows = {mode: {name: peak_mb(model, action, mode) for name, action in CASES.items()}
            for mode in ("disk", "load")}
    plain = {mode: rows[mode]["plain session (model outputs)"] for mode in rows}
    for name in CASES:
        disk, load = rows["disk"][name], rows["load"][name]
        print(f"{name:34s} {disk:11.1f} {disk / plain['disk']:7.2f}x {load:11.1f} "
              f"{load / plain['load']:7.2f}x")


if __name__ == "__main__":
    main()
