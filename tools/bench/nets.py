"""Plain-torch reference networks for the benchmarks (no torchvision needed on CPU).

ResNet-18/50 follow torchvision's layout (same conv shapes); weights are random (seeded).
"""

from __future__ import annotations

import io

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN and a residual."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1, 3x3 (strided), 1x1 x4, with BN and a residual."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(cin, width * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """torchvision-compatible ResNet trunk + classifier."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, (width, count) in enumerate(zip([64, 128, 256, 512], layers, strict=True)):
            blocks = []
            for j in range(count):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int) -> nn.Module:
    """Return a seeded, randomly initialised ResNet-18 or ResNet-50 in eval mode."""
    torch.manual_seed(0)
    if depth == 18:
        net = ResNet(BasicBlock, [2, 2, 2, 2])
    elif depth == 50:
        net = ResNet(Bottleneck, [3, 4, 6, 3])
    else:
        raise ValueError(f"depth must be 18 or 50, got {depth}")
    return net.eval()


def export_onnx(net: nn.Module, shape: tuple[int, ...], opset: int = 13) -> bytes:
    """Export ``net`` with a dynamic batch axis to ONNX bytes (legacy exporter, BN folded)."""
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(shape),), buf, dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return buf.getvalue()
