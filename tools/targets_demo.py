"""Train two tiny models on synthetic scenes and export them for the README's target examples.

Run from the repo root: ``python tools/targets_demo.py --out demo/`` (about a minute on 2 CPU
cores, seed 0). Writes ``demo/shapes_unet.onnx`` (segmentation: background, square, disk),
``demo/shapes_det.onnx`` (ultralytics-style (N, 4 + 2, A) head: square, disk), the scene
``demo/scene.png`` and its mask ``demo/scene_mask.png``. The README's pictures come from::

    featviz cam demo/shapes_unet.onnx demo/scene.png --preset unit --target 2 --out docs-out/
    featviz cam demo/shapes_det.onnx demo/scene.png --preset unit --detections 3 --out docs-out/

Scenes: 128x128 gray noise with 2-4 axis-aligned squares and disks (12-36 px) in random colours.
The detector is FCOS-like: each stride-8 cell whose centre lies in an object predicts its class
(sigmoid, BCE) and the distances to the object's edges (L1); boxes are decoded inside the graph.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812

SIZE, STRIDE = 128, 8


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """Return (3, S, S) float image in [0, 1], (S, S) class map and boxes (x0, y0, x1, y1, cls)."""
    img = rng.uniform(0.3, 0.5, (3, SIZE, SIZE)) + rng.normal(0, 0.05, (3, SIZE, SIZE))
    label = np.zeros((SIZE, SIZE), np.int64)
    boxes: list[tuple[int, ...]] = []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(rng.integers(2, 5)):
        side, cls = int(rng.integers(12, 37)), int(rng.integers(1, 3))
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - side, 2))
        inside = ((xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)) if cls == 1 \
            else ((xx - x0 - side / 2 + 0.5) ** 2 + (yy - y0 - side / 2 + 0.5) ** 2
                  <= (side / 2) ** 2)
        img[:, inside] = rng.uniform(0, 1, 3)[:, None]
        label[inside] = cls
        boxes.append((x0, y0, x0 + side, y0 + side, cls))
    return np.clip(img, 0, 1).astype(np.float32), label, boxes


class ShapesUNet(nn.Module):
    """(N, 3, S, S) -> (N, 3, S, S) logits; encoder at 1/2 and 1/4, skip at full size."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        up = F.interpolate(self.down(skip), scale_factor=4.0, mode="nearest")
        out: torch.Tensor = self.head(self.dec(torch.cat([skip, up], 1)))
        return out


class ShapesDetector(nn.Module):
    """(N, 3, S, S) -> (N, 4 + 2, A) ultralytics-style: cx, cy, w, h, two class scores."""

    points: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 16, 32, 32]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU()]
        self.stem = nn.Sequential(*layers)
        self.neck = nn.Sequential(nn.Conv2d(32, 32, 5, padding=2), nn.ReLU())
        self.head = nn.Conv2d(32, 6, 1)
        cells = SIZE // STRIDE
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        pts = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * STRIDE
        self.register_buffer("points", pts.T.contiguous())

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.neck(self.stem(x))).flatten(2)  # (N, 6, A)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.raw(x)
        dist = torch.sigmoid(raw[:, :4]) * 48.0
        lo, hi = self.points - dist[:, :2], self.points + dist[:, 2:]
        return torch.cat([(lo + hi) / 2, hi - lo, torch.sigmoid(raw[:, 4:])], 1)


def _targets(boxes: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: class one-hot (A, 2), edge distances (A, 4), positive mask (A,)."""
    cells = SIZE // STRIDE
    px = (np.arange(cells * cells) % cells + 0.5) * STRIDE
    py = (np.arange(cells * cells) // cells + 0.5) * STRIDE
    cls = np.zeros((cells * cells, 2), np.float32)
    dist = np.zeros((cells * cells, 4), np.float32)
    pos = np.zeros(cells * cells, bool)
    for x0, y0, x1, y1, c in sorted(boxes, key=lambda b: -(b[2] - b[0])):  # small ones win
        hit = (x0 < px) & (px < x1) & (y0 < py) & (py < y1)
        cls[hit] = 0.0
        cls[hit, c - 1], pos[hit] = 1.0, True
        dist[hit] = np.stack([px - x0, py - y0, x1 - px, y1 - py], 1)[hit]
    return cls, dist, pos


def train(steps: int, seed: int) -> tuple[ShapesUNet, ShapesDetector]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    unet, detector = ShapesUNet(), ShapesDetector()
    opt = torch.optim.Adam([*unet.parameters(), *detector.parameters()], lr=3e-3)
    for step in range(steps):
        batch = [scene(rng) for _ in range(8)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        seg = F.cross_entropy(unet(x), torch.from_numpy(np.stack([b[1] for b in batch])))
        cls, dist, pos = (torch.from_numpy(np.stack(t)) for t in
                          zip(*(_targets(b[2]) for b in batch), strict=True))
        raw = detector.raw(x).transpose(1, 2)  # (N, A, 6)
        det = F.binary_cross_entropy_with_logits(raw[..., 4:], cls)
        pred = torch.sigmoid(raw[..., :4]) * 48.0
        det = det + (F.l1_loss(pred[pos], dist[pos]) / 8.0 if pos.any() else 0.0)
        opt.zero_grad()
        (seg + det).backward()  # type: ignore[no-untyped-call]
        opt.step()
        if step % 50 == 0:
            print(f"step {step}: segmentation {float(seg):.3f}, detection {float(det):.3f}")
    return unet.eval(), detector.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    unet, detector = train(args.steps, args.seed)
    example = torch.zeros(1, 3, SIZE, SIZE)
    for model, name in ((unet, "shapes_unet"), (detector, "shapes_det")):
        torch.onnx.export(model, (example,), str(args.out / f"{name}.onnx"), dynamo=False,
                          input_names=["input"], output_names=["output"], opset_version=17)
    img, label, _ = scene(np.random.default_rng(args.seed + 1000))
    Image.fromarray(np.uint8(np.round(img.transpose(1, 2, 0) * 255))).save(args.out / "scene.png")
    Image.fromarray(np.uint8(label * 127)).save(args.out / "scene_mask.png")
    print(f"wrote {args.out}/shapes_unet.onnx, shapes_det.onnx, scene.png, scene_mask.png")


if __name__ == "__main__":
    main()
