"""Benchmark featviz against the real pytorch-grad-cam 1.5.7 and Captum 0.9 (issue 16).

Run from the repo root: ``python tools/bench/bench_gradcam.py [--reps 3] [--skip-heavy]``.

Same process, same weights (``tools/bench/nets.py`` ResNet-50, random seeded weights, BN folded
in the ONNX export), same layer (``layer4``'s output), same target (each image's top class),
2 torch threads and onnxruntime's default (all cores). Contenders alternate inside each
repetition and each keeps its best time (the machine is shared: times are noisy).

1. Grad-CAM family, 8 images at 224x224: ``Inspector.cam`` vs pytorch-grad-cam's classes.
2. Score-CAM and Ablation-CAM, 1 image at 112x112 (layer4: 2048 channels of 4x4), each run at
   its library's default batch (featviz 32 rows; pytorch-grad-cam Score-CAM 16, Ablation 32).
3. Saliency, 8 images at 224x224: ``Inspector.backprop(x, "saliency")`` vs Captum's.

Each row prints featviz / other, and how well the two maps agree (Pearson correlation over
all pixels and the largest absolute difference, both maps in [0, 1]) so the rows compare like
with like. Known differences: pytorch-grad-cam scales each layer map to [0, 1] and then
resizes it with ``cv2.resize`` (featviz: bilinear with half-pixel centres, then [0, 1]); its
Score-CAM upsamples the masks with ``UpsamplingBilinear2d`` (align_corners=True; featviz:
half-pixel centres, as its Grad-CAM maps); its Ablation-CAM runs the whole network per row
(featviz runs the graph from the layer on). A package that does not import skips its rows
with the reason printed. pytorch-grad-cam needs torchvision only for imports the benchmark
does not use; with no CPU torchvision wheel here, a stub module stands in for it.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from onnx_featviz import api  # noqa: E402
from tools.bench.nets import export_onnx, resnet  # noqa: E402
from tools.bench.timing import alternate  # noqa: E402

#: featviz method -> pytorch-grad-cam class name.
GRADIENT = {"grad_cam": "GradCAM", "grad_cam_pp": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM",
            "hires_cam": "HiResCAM", "layer_cam": "LayerCAM", "eigen_cam": "EigenCAM"}
HEAVY = {"score_cam": "ScoreCAM", "ablation_cam": "AblationCAM"}
Row = tuple[str, float, float, float, float]  # name, featviz s, other s, correlation, max diff


def stub_torchvision() -> None:
    """Put a ``torchvision`` stub in ``sys.modules`` for pytorch-grad-cam's unused imports."""
    if "torchvision" in sys.modules:
        return
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    def missing(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("torchvision stub: not available in this benchmark")

    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(transforms, name, missing)
    functional.resize = missing  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def load_gradcam() -> tuple[Any, str]:
    """Return (the pytorch_grad_cam module or None, why it is missing)."""
    stub_torchvision()
    try:
        import pytorch_grad_cam
    except ImportError as err:
        return None, (f"pytorch-grad-cam rows skipped: {err} (pip install --no-deps "
                      "grad-cam==1.5.7 ttach opencv-python-headless scikit-learn)")
    return pytorch_grad_cam, ""


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(Pearson correlation, max |difference|) of two (N, H, W) maps in [0, 1]."""
    a = np.asarray(ours, np.float64).ravel()
    b = np.asarray(theirs, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1]), float(np.abs(a - b).max())


def layer4_output(ins: api.Inspector) -> str:
    """The node name of layer4's last ReLU (the CAM layer of both libraries)."""
    relus = [layer for layer in ins.info.layers if layer.op_type == "Relu"]
    assert "layer4" in relus[-1].name, relus[-1].name
    return relus[-1].name


def network(shift: float) -> torch.nn.Module:
    """ResNet-50 (random seeded weights); ``shift`` > 0 lowers the last block's bn3 bias so
    layer4's ReLU output is sparser (more constant and one-cell maps: a synthetic stand-in
    for trained weights, which are not available offline)."""
    net = resnet(50)
    last: Any = net.layer4[-1]  # type: ignore[index]
    with torch.no_grad():
        last.bn3.bias -= shift
    return net


def distinct_rows(ins: api.Inspector, x: np.ndarray, layer: str) -> str:
    """Say how many Score-CAM rows featviz runs for ``x`` at ``layer``."""
    from onnx_featviz.attribution import perturbation

    tensor = ins.info.layer(layer).output
    acts = ins.capture(x, [tensor])[tensor].astype(np.float32)
    flat = acts.reshape(acts.shape[0] * acts.shape[1], -1)
    constant = flat.max(axis=1) == flat.min(axis=1)
    live, _ = perturbation._distinct_maps(flat, constant, acts.shape[1])
    ones = int(((flat > flat.min(axis=1, keepdims=True)).sum(axis=1) == 1).sum())
    return (f"featviz Score-CAM rows: {live.size + int(constant.any())} of {flat.shape[0]} "
            f"({int(constant.sum())} constant maps share 1 row; {ones} maps with one cell "
            f"above their minimum; {flat.shape[0] - int(constant.sum()) - live.size} "
            "duplicates after min-max)")


def _contenders(ins: api.Inspector, opts: api.CamOptions, cam: Any, x: np.ndarray,
                out: dict[str, Any]) -> dict[str, Callable[[], object]]:
    """featviz and pytorch-grad-cam calls for one method; each stores its maps in ``out``."""
    xt = torch.from_numpy(x)

    def ours() -> None:
        out["ours"] = ins.cam(x, opts).cam

    def theirs() -> None:
        out["theirs"] = cam(xt, targets=None)

    return {"featviz": ours, "grad-cam": theirs}


def cam_rows(gc: Any, methods: dict[str, str], x: np.ndarray, reps: int,
             net: torch.nn.Module, warm: tuple[str, ...] | None = None) -> list[Row]:
    """featviz ``cam`` vs pytorch-grad-cam for ``methods`` on ``net`` at layer4."""
    rows = []
    with api.Inspector(export_onnx(net, (1, *x.shape[1:])), "cpu") as ins:
        layer = layer4_output(ins)
        if "score_cam" in methods:
            print(distinct_rows(ins, x, layer))
        for method, cls in methods.items():
            opts = api.CamOptions(method, layer=layer, overlays=False)
            cam = getattr(gc, cls)(model=net, target_layers=[net.layer4])
            try:
                out: dict[str, Any] = {}
                times = alternate(_contenders(ins, opts, cam, x, out), reps, warm)
            finally:
                cam.activations_and_grads.release()
            rows.append((method, times["featviz"], times["grad-cam"],
                         *agreement(out["ours"], out["theirs"])))
    return rows


def saliency_row(images: int, reps: int) -> tuple[list[Row], str]:
    """featviz saliency vs Captum 0.9 ``Saliency`` (max over channels of |grad|, [0, 1])."""
    try:
        from captum.attr import Saliency
    except ImportError as err:
        return [], f"Captum rows skipped: {err} (pip install --no-deps captum==0.9.0)"
    net = resnet(50)
    x = np.random.default_rng(0).normal(size=(images, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)
    sal = Saliency(net)
    out: dict[str, Any] = {}

    def captum() -> None:  # like featviz: pick the top class, then the gradient
        with torch.no_grad():
            target = net(xt).argmax(1)
        grads = sal.attribute(xt.clone().requires_grad_(True), target=target)
        out["theirs"] = grads.detach().numpy().max(axis=1)

    with api.Inspector(export_onnx(net, (1, 3, 224, 224)), "cpu") as ins:
        times = alternate({"featviz": lambda: out.__setitem__("ours", ins.backprop(x, "saliency")),
                           "captum": captum}, reps)
    theirs = out["theirs"] - out["theirs"].min(axis=(1, 2), keepdims=True)
    theirs /= theirs.max(axis=(1, 2), keepdims=True)
    return [("saliency (vs Captum)", times["featviz"], times["captum"],
             *agreement(out["ours"], theirs))], ""


def print_table(title: str, rows: list[Row], other: str) -> None:
    print(f"\n{title}\n| method | featviz s | {other} s | featviz / {other} | map corr. | "
          "max diff |\n|---|---:|---:|---:|---:|---:|")
    for name, ours, theirs, corr, diff in rows:
        print(f"| {name} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} | {corr:.4f} | "
              f"{diff:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--heavy-reps", type=int, default=2)
    parser.add_argument("--skip-heavy", action="store_true", help="no Score/Ablation-CAM rows")
    parser.add_argument("--only", choices=("cam", "heavy", "saliency"))
    parser.add_argument("--heavy-methods", nargs="+", choices=tuple(HEAVY), default=list(HEAVY))
    parser.add_argument("--layer4-shift", type=float, nargs="+", default=[0.0],
                        help="heavy rows once per value (see ``network``)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"load before: {os.getloadavg()}; torch {torch.__version__}")
    gc, why = load_gradcam()
    if gc is None:
        print(why)
    elif args.only in (None, "cam"):
        x = np.random.default_rng(0).normal(size=(args.images, 3, 224, 224)).astype(np.float32)
        print_table(f"Grad-CAM family, ResNet-50 layer4, {args.images} x 224x224",
                    cam_rows(gc, GRADIENT, x, args.reps, network(0.0)), "grad-cam")
    if gc is not None and not args.skip_heavy and args.only in (None, "heavy"):
        x = np.random.default_rng(0).normal(size=(1, 3, 112, 112)).astype(np.float32)
        heavy = {m: HEAVY[m] for m in args.heavy_methods}
        for shift in args.layer4_shift:
            print_table(f"Score-CAM / Ablation-CAM, ResNet-50 layer4 (2048 ch), 1 x 112x112, "
                        f"bn3 bias shift {shift}",
                        cam_rows(gc, heavy, x, args.heavy_reps, network(shift), ("featviz",)),
                        "grad-cam")
    if args.only in (None, "saliency"):
        rows, why = saliency_row(args.images, args.reps)
        if why:
            print(why)
        else:
            print_table(f"Saliency, ResNet-50, {args.images} x 224x224", rows, "captum")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
