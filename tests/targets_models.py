"""Small torch models with segmentation and detection heads, and their ONNX export.

Imported only by tests that first ran ``pytest.importorskip("torch")``. Weights come from
``torch.manual_seed(seed)``; biases are spread so scores cover (0, 1) and NMS has work to do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def _stem(widths: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 3x3 conv + ReLU per width after the 3 input channels."""
    layers: list[nn.Module] = []
    for cin, cout in zip((3, *widths[:-1]), widths, strict=True):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


class TinyUNet(nn.Module):
    """(N, 3, H, W) -> (N, K, H, W) logits: conv, pool, conv, 2x upsample, skip concat, 1x1.

    ::

        x -> conv3x3(8) relu --skip----------------------------.
                 `-> maxpool2 -> conv3x3(16) relu -> up2 -> concat -> conv3x3(8) relu -> 1x1(K)
    """

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.dec = nn.Conv2d(24, 8, 3, padding=1)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.relu(self.enc(x))
        mid = F.relu(self.mid(F.max_pool2d(skip, 2)))
        up = F.interpolate(mid, scale_factor=2.0, mode="nearest")
        out: torch.Tensor = self.head(F.relu(self.dec(torch.cat([skip, up], 1))))
        return out


def _grid(h: int, w: int, stride: int) -> torch.Tensor:
    """(h*w, 2) cell centres ``((j + 0.5) * stride, (i + 0.5) * stride)``, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride


class YoloV8Head(nn.Module):
    """Anchor-free ultralytics-style detector: (N, 3, S, S) -> (N, 4 + K, A) decoded.

    Two levels (strides 8 and 16). Per anchor point p = cell centre, a 1x1 conv gives distances
    ``l, t, r, b = 4 sigmoid(.) * stride`` and class logits; the box is
    ``(p - (l, t), p + (r, b))`` written as ``cx, cy, w, h``; class scores are sigmoids.
    A = (S/8)^2 + (S/16)^2. (Softplus distances would export as Where under dynamo, which the
    reverse mode has no rule for.)
    """

    points: torch.Tensor
    strides: torch.Tensor

    def __init__(self, classes: int = 3, size: int = 64) -> None:
        super().__init__()
        self.classes = classes
        self.stem = _stem((8, 8, 16))
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.heads = nn.ModuleList([nn.Conv2d(16, 4 + classes, 1) for _ in range(2)])
        points = [_grid(size // s, size // s, s) for s in (8, 16)]
        self.register_buffer("points", torch.cat(points).T.contiguous())  # (2, A)
        self.register_buffer("strides", torch.cat(
            [torch.full((len(p),), float(s)) for p, s in zip(points, (8, 16), strict=True)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stem(x)
        feats = [p3, self.down(p3)]
        raw = torch.cat([h(f).flatten(2) for h, f in zip(self.heads, feats, strict=True)], 2)
        dist = torch.sigmoid(raw[:, :4]) * 4 * self.strides
        lo, hi = self.points - dist[:, :2], self.points + dist[:, 2:]
        box = torch.cat([(lo + hi) / 2, hi - lo], 1)
        return torch.cat([box, torch.sigmoid(raw[:, 4:])], 1)


class YoloV5Head(nn.Module):
    """Anchor-based YOLOv5-style detector: (N, 3, S, S) -> (N, A, 5 + K) decoded.

    One level, stride 8, two anchors per cell (A = 2 (S/8)^2, anchor-major then row-major
    cells). With s = sigmoid(raw): ``xy = (2 s - 0.5 + cell) * 8``, ``wh = (2 s)^2 * anchor``,
    objectness and class scores ``s``.
    """

    cell: torch.Tensor
    anchors: torch.Tensor

    def __init__(self, classes: int = 3, size: int = 64) -> None:
        super().__init__()
        self.classes, self.cells = classes, size // 8
        self.stem = _stem((8, 8, 16))
        self.head = nn.Conv2d(16, 2 * (5 + classes), 1)
        self.register_buffer("cell", _grid(self.cells, self.cells, 1) - 0.5)  # (h*w, 2)
        self.register_buffer("anchors", torch.tensor([[10.0, 14.0], [23.0, 27.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        raw = self.head(self.stem(x)).view(n, 2, 5 + self.classes, -1).permute(0, 1, 3, 2)
        s = torch.sigmoid(raw)  # (N, 2, h*w, 5+K)
        xy = (s[..., :2] * 2 - 0.5 + self.cell) * 8
        wh = (s[..., 2:4] * 2) ** 2 * self.anchors[:, None, :]
        return torch.cat([xy, wh, s[..., 4:]], -1).reshape(n, -1, 5 + self.classes)


class BoxesScores(nn.Module):
    """SSD-style detector with decoding inside: boxes (N, A, 4) xyxy and scores (N, A, K).

    Stride 8 cells, one box per cell: ``centre +- 4 sigmoid(.) * 8``; scores are a softmax over
    the K classes.
    """

    centre: torch.Tensor

    def __init__(self, classes: int = 3, size: int = 64) -> None:
        super().__init__()
        self.stem = _stem((8, 8, 16))
        self.box = nn.Conv2d(16, 4, 1)
        self.cls = nn.Conv2d(16, classes, 1)
        self.register_buffer("centre", _grid(size // 8, size // 8, 8))  # (A, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.stem(x)
        dist = torch.sigmoid(self.box(f).flatten(2).transpose(1, 2)) * 32
        boxes = torch.cat([self.centre - dist[..., :2], self.centre + dist[..., 2:]], -1)
        return boxes, torch.softmax(self.cls(f).flatten(2).transpose(1, 2), -1)


def build(name: str, seed: int = 0) -> nn.Module:
    """Return model ``name`` (unet, yolov8, yolov5, boxes) in eval mode with seeded weights."""
    torch.manual_seed(seed)
    model: nn.Module = {"unet": TinyUNet, "yolov8": YoloV8Head, "yolov5": YoloV5Head,
                        "boxes": BoxesScores}[name]()
    with torch.no_grad():  # spread biases: scores across (0, 1), varied box sizes
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d) and mod.bias is not None:
                mod.bias.copy_(torch.linspace(-1.5, 1.5, len(mod.bias)))
        # boxes ~3 strides wide so neighbours overlap (NMS drops some); scores around conf 0.25
        if isinstance(model, TinyUNet):  # each class wins about a third of the pixels
            head_bias = model.head.bias
            assert head_bias is not None
            head_bias.copy_(torch.tensor([-0.56, -0.81, 0.13]))
        heads = list(getattr(model, "heads", ())) + [getattr(model, "box", None)]
        for head in (h for h in heads if h is not None):
            bias: torch.Tensor = head.bias
            bias[:4] = 1.0
            bias[4:] = torch.linspace(-2.0, 0.0, len(bias) - 4)
    model.eval()
    return model


def export(model: nn.Module, path: Path, *, dynamo: bool, size: int = 64,
           output_names: list[str] | None = None) -> Path:
    """Export ``model`` for a (1, 3, size, size) input named ``input``; dynamic batch for the
    TorchScript exporter (the dynamo one gets a batch-2 example and a dynamic batch dim)."""
    example = torch.zeros(2, 3, size, size)
    if dynamo:
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["input"],
                          output_names=output_names,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    else:
        outs = output_names or ["output"]
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=outs, opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outs}})
    return path


def build_and_export(name: str, folder: Path, *, dynamo: bool) -> tuple[nn.Module, Path]:
    """Seeded model ``name`` and its export to ``folder/m.onnx`` (the boxes model's two outputs
    named ``boxes`` and ``scores``), as the target tests use them."""
    torch.set_num_threads(1)
    model = build(name)
    path = export(model, folder / "m.onnx", dynamo=dynamo,
                  output_names=["boxes", "scores"] if name == "boxes" else None)
    return model, path
