"""Benchmark the target rows of issue 16: input gradients and batched detection CAMs.

Run from the repo root: ``python tools/bench/bench_targets.py [--images 8] [--reps 3]``.

1. Input gradients on ResNet-50 (``tools/bench/nets.py``, random weights, 8 images at 224x224):
   ``Inspector.backprop`` saliency and guided, each as a multiple of one plain onnxruntime
   forward pass of the same batch (target: <= 3x), next to torch's own ``backward()`` to the
   input (the baseline) and, where installed, Captum 0.9's ``Saliency``.
2. Detection: the YOLO-style head of ``tests/targets_models.py`` at 320x320, Grad-CAM of the 10
   best detections of one image (one session call, 10 seed rows) against Grad-CAM of one
   (target: <= 1.5x), next to torch doing what pytorch-grad-cam's loop does (one backward per
   detection).
3. ``--profile``: writes onnxruntime's profiler JSON of the saliency reverse graph and prints the
   op types taking the most time.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from onnx_featviz import api, autodiff  # noqa: E402
from tools.bench.nets import export_onnx, resnet  # noqa: E402
from tools.bench.timing import alternate, best_of  # noqa: E402


def _input_gradients(images: int, reps: int) -> list[tuple[str, float, float]]:
    """Rows (name, seconds, multiple of one forward pass) for ResNet-50 input gradients."""
    torch.manual_seed(0)
    net = resnet(50).eval()
    x = np.random.default_rng(0).normal(size=(images, 3, 224, 224)).astype(np.float32)
    model = export_onnx(net, (1, 3, 224, 224))
    rows = []
    with api.Inspector(model, "cpu") as ins:
        session = ins.session()
        calls = {"onnxruntime forward": lambda: session.run({ins.spec.name: x}),
                 "featviz backprop saliency": functools.partial(ins.backprop, x, "saliency"),
                 "featviz backprop guided": functools.partial(ins.backprop, x, "guided")}
        best = alternate(calls, reps)  # the host's noise hits every contender alike
        fwd = best["onnxruntime forward"]
        rows += [(name, t, t / fwd) for name, t in best.items()]
    xt = torch.from_numpy(x)

    def torch_saliency() -> None:
        xi = xt.clone().requires_grad_(True)
        out = net(xi)
        out.gather(1, out.argmax(1)[:, None]).sum().backward()

    t = best_of(torch_saliency, reps)
    rows.append(("torch backward to the input", t, t / fwd))
    try:
        from captum.attr import Saliency
    except ImportError:
        rows.append(("captum Saliency (not installed)", float("nan"), float("nan")))
    else:
        sal = Saliency(net)
        target = net(xt).argmax(1)
        t = best_of(lambda: sal.attribute(xt.clone().requires_grad_(True), target=target), reps)
        rows.append(("captum 0.9 Saliency", t, t / fwd))
    return rows


def _detection(reps: int) -> list[tuple[str, float, float]]:
    """Rows (name, seconds, multiple of one detection) for Grad-CAM of 10 vs 1 detections."""
    from tests import targets_models

    torch.manual_seed(0)
    model = targets_models.YoloV8Head(classes=3, size=320).eval()
    x = np.random.default_rng(0).normal(size=(1, 3, 320, 320)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = targets_models.export(model, Path(tmp) / "yolo.onnx", dynamo=False, size=320)
        decode = api.DetectionOptions(conf=0.0)
        rows = []
        with api.Inspector(path, "cpu") as ins:
            layer = ins.info.conv_layers[2].name
            calls = {str(k): functools.partial(ins.cam, x, api.CamOptions(
                layer=layer, overlays=False, goal=api.TargetSpec(detections=k, decode=decode)))
                for k in (1, 10)}
            times = {int(k): t for k, t in alternate(calls, reps).items()}
            rows += [("featviz grad_cam, 1 detection", times[1], 1.0),
                     ("featviz grad_cam, 10 detections", times[10], times[10] / times[1])]
    xt = torch.from_numpy(x)
    store: dict[str, torch.Tensor] = {}
    model.stem.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))

    def torch_loop(k: int) -> None:
        for a in range(k):  # pytorch-grad-cam: one forward + backward per target
            out = model(xt)
            store["a"].retain_grad()
            out[0, 4, a].backward()

    one = best_of(lambda: torch_loop(1), reps)
    ten = best_of(lambda: torch_loop(10), reps)
    rows += [("torch loop, 1 detection", one, one / times[1]),
             ("torch loop, 10 detections", ten, ten / times[1])]
    return rows


def _profile(images: int, out: Path) -> None:
    """Profile the saliency reverse graph of ResNet-50; print the top op types."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = onnx.load_from_string(export_onnx(resnet(50).eval(), (1, 3, 224, 224)))
    logits = model.graph.output[0].name
    grad = autodiff.differentiate(model, of=logits, wrt=[model.graph.input[0].name])
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(out / "saliency_profile")
    session = ort.InferenceSession(grad.model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(images, 3, 224, 224)).astype(np.float32)
    seed = np.zeros((images, 1000), np.float32)
    seed[:, 0] = 1.0
    for _ in range(2):
        session.run(None, {model.graph.input[0].name: x, grad.seed: seed})
    path = session.end_profiling()
    per_op: collections.Counter[str] = collections.Counter()
    for event in json.loads(Path(path).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    print(f"profile: {path}")
    for op, dur in per_op.most_common(10):
        print(f"  {op:24s} {dur / 1e3:9.1f} ms  {100 * dur / total:5.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="folder for onnxruntime's profile JSON")
    parser.add_argument("--skip-gradients", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        _profile(args.images, args.profile)
    sections = [("detection, 320x320 YOLO-style head", _detection(args.reps))]
    if not args.skip_gradients:
        sections.insert(0, (f"input gradients, ResNet-50, {args.images} x 224x224",
                            _input_gradients(args.images, args.reps)))
    for title, rows in sections:
        print(f"\n{title}\n| run | s | ratio |\n|---|---:|---:|")
        for name, secs, ratio in rows:
            print(f"| {name} | {secs:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
