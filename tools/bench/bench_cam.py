"""Benchmark class-activation maps and backprop views (issue 4) against a torch baseline.

Run from the repo root: ``python tools/bench/bench_cam.py [--depth 18] [--images 8] [--reps 3]``.

Each method runs through ``Inspector.cam`` (``overlays=False``, like the baseline) /
``Inspector.backprop`` (target selection, the
ONNX reverse graph, heatmaps at the input size) on a ResNet from ``tools/bench/nets.py``. The
baseline, measured in the same run, is the same network in torch computing the method the way
pytorch-grad-cam 1.5.7 does (forward hooks on ``layer4``, ``backward()``, Eigen-CAM's full SVD,
Score-CAM's masked batches of 16, Ablation-CAM's full forward passes of 32 with the layer output
replaced, guided backprop one image at a time). Each time is also given as a multiple of one
plain onnxruntime forward pass of the same batch. With ``--provider cuda`` (default where CUDA
runs) the last column compares with pytorch-grad-cam's own H200 times given in issue 4.
Score-CAM and Ablation-CAM run one forward row per (image, channel); on CPU they use
``--heavy-images`` images at ``--heavy-size`` so the run stays short.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (first: its CUDA libraries load before onnxruntime's)
import torch.nn.functional as F  # noqa: E402

from onnx_featviz import api, runtime  # noqa: E402
from tools.bench.nets import export_onnx, resnet  # noqa: E402
from tools.bench.timing import best_of  # noqa: E402

#: pytorch-grad-cam 1.5.7 on an NVIDIA H200, ResNet-50, 8 images at 224x224 (issue 4), ms.
H200_MS = {"forward": 3.4, "grad_cam": 19.1, "grad_cam_pp": 23.4, "hires_cam": 16.6,
           "layer_cam": 17.0, "eigen_cam": 1095.0, "ablation_cam": 3691.0, "score_cam": 7216.0,
           "guided": 83.7 * 8}
H200_TARGET = {"eigen_cam": 0.1, "ablation_cam": 0.5, "score_cam": 0.5, "guided": 0.5}
GRADIENT = ("grad_cam", "grad_cam_pp", "xgrad_cam", "hires_cam", "layer_cam")


class TorchCams:
    """pytorch-grad-cam's computations, written out in plain torch on the same network."""

    def __init__(self, net: torch.nn.Module, x: np.ndarray, device: str) -> None:
        self.net = net.to(device)
        self.x = torch.from_numpy(x).to(device)
        self.device = device
        self.store: dict[str, torch.Tensor] = {}
        net.layer4.register_forward_hook(self._hook)  # type: ignore[union-attr]

    def _hook(self, module: object, inputs: object, output: torch.Tensor) -> torch.Tensor:
        if "replace" in self.store:
            return self.store["replace"]
        self.store["acts"] = output
        if output.requires_grad:
            output.register_hook(lambda g: self.store.__setitem__("grads", g))
        return output

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def gradient(self, method: str) -> np.ndarray:
        x = self.x.clone().requires_grad_(True)
        logits = self.net(x)
        target = logits.argmax(dim=1)
        self.net.zero_grad()
        logits.gather(1, target[:, None]).sum().backward()
        a, g = self.store["acts"].detach(), self.store["grads"]
        if method == "grad_cam":
            cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)
        elif method == "grad_cam_pp":
            alpha = g ** 2 / (2 * g ** 2 + a.sum(dim=(2, 3), keepdim=True) * g ** 3 + 1e-6)
            cam = ((alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True) * a).sum(1)
        elif method == "xgrad_cam":
            w = (g * a).sum(dim=(2, 3), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + 1e-7)
            cam = (w * a).sum(1)
        elif method == "hires_cam":
            cam = (g * a).sum(1)
        else:
            cam = (g.clamp(min=0) * a).sum(1)
        return self._finish(cam.clamp(min=0))

    def _finish(self, cam: torch.Tensor) -> np.ndarray:
        up = F.interpolate(cam[:, None], size=self.x.shape[2:], mode="bilinear")[:, 0]
        lo = up.amin(dim=(1, 2), keepdim=True)
        out = (up - lo) / (up.amax(dim=(1, 2), keepdim=True) - lo + 1e-7)
        self._sync()
        return out.cpu().numpy()

    def eigen_cam(self) -> np.ndarray:
        with torch.no_grad():
            self.net(self.x)
        acts = self.store["acts"].cpu().numpy()
        maps = []
        for act in acts:  # pytorch-grad-cam get_2d_projection: full SVD per image
            flat = act.reshape(act.shape[0], -1).T
            flat = flat - flat.mean(axis=0)
            _, _, vt = np.linalg.svd(flat, full_matrices=True)
            maps.append((flat @ vt[0]).reshape(act.shape[1:]))
        return self._finish(torch.from_numpy(np.stack(maps)).to(self.device).clamp(min=0))

    def score_cam(self, batch_size: int = 16) -> np.ndarray:
        with torch.no_grad():
            logits = self.net(self.x)
            target = logits.argmax(dim=1)
            acts = self.store["acts"]
            up = F.interpolate(acts, size=self.x.shape[2:], mode="bilinear")
            lo = up.amin(dim=(2, 3), keepdim=True)
            hi = up.amax(dim=(2, 3), keepdim=True)
            masks = (up - lo) / (hi - lo + 1e-8)
            weights = []
            for i in range(len(self.x)):
                scores = []
                for start in range(0, masks.shape[1], batch_size):
                    rows = self.x[i:i + 1] * masks[i, start:start + batch_size, None]
                    scores.append(self.net(rows)[:, target[i]])
                weights.append(torch.softmax(torch.cat(scores), dim=0))
            w = torch.stack(weights)[:, :, None, None]
            return self._finish((w * acts).sum(1).clamp(min=0))

    def ablation_cam(self, batch_size: int = 32) -> np.ndarray:
        with torch.no_grad():
            logits = self.net(self.x)
            target = logits.argmax(dim=1)
            acts = self.store["acts"]
            k = acts.shape[1]
            weights = torch.empty(acts.shape[:2], device=self.device)
            for i in range(len(self.x)):
                y = logits[i, target[i]]
                for start in range(0, k, batch_size):
                    idx = torch.arange(start, min(start + batch_size, k), device=self.device)
                    ablated = acts[i:i + 1].repeat(len(idx), 1, 1, 1)
                    ablated[torch.arange(len(idx)), idx] = 0.0
                    self.store["replace"] = ablated
                    out = self.net(self.x[i:i + 1].repeat(len(idx), 1, 1, 1))[:, target[i]]
                    del self.store["replace"]
                    weights[i, idx] = (y - out) / y
            return self._finish((weights[:, :, None, None] * acts).sum(1).clamp(min=0))

    def guided(self) -> np.ndarray:
        handles = [m.register_full_backward_hook(
            lambda mod, gin, gout: (gin[0].clamp(min=0),))
            for m in self.net.modules() if isinstance(m, torch.nn.ReLU)]
        try:
            views = []
            for i in range(len(self.x)):  # GuidedBackpropReLUModel: one image per call
                x = self.x[i:i + 1].clone().requires_grad_(True)
                out = self.net(x)
                out[0, out[0].argmax()].backward()
                views.append(x.grad.detach())
            self._sync()
            return torch.cat(views).cpu().numpy()
        finally:
            for handle in handles:
                handle.remove()


def measure(depth: int, n_images: int, size: int, provider: str, reps: int,
            methods: tuple[str, ...]) -> list[tuple]:
    """Return table rows (method, ours s, baseline s, forward s, ours/forward, h200 cell)."""
    net = resnet(depth)
    model = export_onnx(net, (1, 3, size, size))
    x = np.random.default_rng(0).standard_normal((n_images, 3, size, size), np.float32)
    rows = []
    device = "cuda" if provider == "cuda" else "cpu"
    base = TorchCams(net, x, device)
    with api.Inspector(model, provider, max_batch=None) as insp:
        plain_session = insp.session()
        plain = best_of(lambda: plain_session.run({insp.spec.name: x}), reps)
        rows.append(("forward", plain, _time_torch_forward(net, x, device, reps), plain))
        for method in methods:
            if method == "guided":
                ours = best_of(lambda: insp.backprop(x, "guided"), reps)
                theirs = best_of(base.guided, reps)
            else:
                opts = api.CamOptions(method, batch_size=32, overlays=False)
                ours = best_of(lambda o=opts: insp.cam(x, o), reps)
                theirs = best_of(_baseline(base, method), reps)
            rows.append((method, ours, theirs, plain))
    return rows


def _baseline(base: TorchCams, method: str) -> Callable[[], object]:
    if method in GRADIENT:
        return lambda: base.gradient(method)
    return {"eigen_cam": base.eigen_cam, "score_cam": base.score_cam,
            "ablation_cam": base.ablation_cam}[method]


def _time_torch_forward(net: torch.nn.Module, x: np.ndarray, device: str, reps: int) -> float:
    xt = torch.from_numpy(x).to(device)

    def run() -> None:
        with torch.no_grad():
            net(xt)
        if device == "cuda":
            torch.cuda.synchronize()

    return best_of(run, reps)


def print_table(title: str, rows: list[tuple], provider: str, full_config: bool) -> None:
    print(f"\n{title}")
    print("| method | this | torch baseline | this / baseline | this / plain forward "
          "| vs pytorch-grad-cam H200 |")
    print("|---|---|---|---|---|---|")
    for method, ours, theirs, plain in rows:
        ref = ""
        if provider == "cuda" and full_config and method in H200_MS:
            ratio = ours * 1000 / H200_MS[method]
            target = H200_TARGET.get(method, 1.0)
            ref = f"{ratio:.2f} (<= {target}: {'yes' if ratio <= target else 'NO'})"
        print(f"| {method} | {ours * 1000:.1f} ms | {theirs * 1000:.1f} ms | "
              f"{ours / theirs:.2f} | {ours / plain:.1f} | {ref} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = runtime.cuda_runs()
    parser.add_argument("--provider", default="cuda" if cuda else "cpu")
    parser.add_argument("--depth", type=int, default=50 if cuda else 18)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--heavy-images", type=int, default=8 if cuda else 1)
    parser.add_argument("--heavy-size", type=int, default=224 if cuda else 112)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    light = (*GRADIENT, "eigen_cam", "guided")
    rows = measure(args.depth, args.images, args.size, args.provider, args.reps, light)
    full = args.depth == 50 and args.images == 8 and args.size == 224
    print_table(f"ResNet-{args.depth}, {args.images} images {args.size}x{args.size}, "
                f"{args.provider}", rows, args.provider, full)
    heavy = measure(args.depth, args.heavy_images, args.heavy_size, args.provider,
                    max(1, args.reps - 2), ("score_cam", "ablation_cam"))
    full = args.depth == 50 and args.heavy_images == 8 and args.heavy_size == 224
    print_table(f"ResNet-{args.depth}, {args.heavy_images} images "
                f"{args.heavy_size}x{args.heavy_size}, {args.provider} (one forward row per "
                "image and channel)", heavy, args.provider, full)


if __name__ == "__main__":
    main()
