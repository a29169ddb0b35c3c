"""A zoo of small modern CNN/ViT architectures in plain torch, and their ONNX export.

Every model is tiny (few channels, 32-64 px inputs), randomly initialised with
``torch.manual_seed(0)`` and put in eval mode, so a test can export it with either torch
exporter and compare onnxruntime against torch's own forward pass. Module names follow the
torchvision / timm conventions (``layer1..layer4``, ``features``, ``stages.N``) so module-path
lookups (``layer4.1``, ``features.12``) mean the same thing as on the real networks.

Import only from tests, behind ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------- building blocks


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Return Conv (same padding, no bias) -> BatchNorm -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)  # type: ignore[no-any-return]


class ResNet(nn.Module):
    """ResNet-18 layout at 1/8 width: stem, ``layer1..layer4`` of two blocks, ``fc``."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 16, 32), groups: int = 1,
                 classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin, w, stride, groups), BasicBlock(w, w, 1, groups)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):  # setattr-made layers: mypy cannot see them
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # type: ignore[no-any-return]


def vgg() -> nn.Module:
    """VGG-style ``features`` (conv/relu/maxpool) and ``classifier`` on 32 px."""
    cfg: list[int | str] = [8, "M", 16, "M", 16, 16, "M", 32, 32, "M"]
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    classifier = nn.Sequential(nn.Linear(32 * 2 * 2, 32), nn.ReLU(), nn.Dropout(),
                               nn.Linear(32, 10))
    return _Vgg(nn.Sequential(*layers), classifier)


class _Vgg(nn.Module):
    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))  # type: ignore[no-any-return]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global mean, 1x1 reduce, act, 1x1 expand, gate."""

    def __init__(self, c: int, r: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(r, c, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))  # type: ignore[no-any-return]


class InvertedResidual(nn.Module):
    """MobileNet / EfficientNet block: expand 1x1, depthwise kxk, optional SE, project 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, k: int = 3,
                 act: type[nn.Module] = nn.ReLU6, se: SqueezeExcite | None = None) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, mid, 1, act=act))
        layers.append(conv_bn(mid, mid, k, stride, groups=mid, act=act))
        if se is not None:
            layers.append(se)
        layers.append(conv_bn(mid, cout, 1, act=None))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y  # type: ignore[no-any-return]


class _Features(nn.Module):
    """``features`` Sequential, global pool, ``classifier`` (the torchvision layout)."""

    def __init__(self, features: list[nn.Module], cout: int, classifier: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        self.cout = cout

    def forward(self, x: Tensor) -> Tensor:
        y = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(y)  # type: ignore[no-any-return]


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 at small width: ReLU6, inverted residuals, ``features.N``."""
    cfg = [(1, 8, 1), (4, 8, 2), (4, 8, 1), (4, 16, 2), (4, 16, 1), (4, 24, 2)]
    feats: list[nn.Module] = [conv_bn(3, 8, 3, 1, act=nn.ReLU6)]
    cin = 8
    for t, c, s in cfg:
        feats.append(InvertedResidual(cin, c, s, t))
        cin = c
    feats.append(conv_bn(cin, 48, 1, act=nn.ReLU6))
    return _Features(feats, 48, nn.Sequential(nn.Dropout(0.2), nn.Linear(48, 10)))


def mobilenet_v3() -> nn.Module:
    """MobileNetV3-small style: Hardswish, SE gated with Hardsigmoid, 5x5 depthwise."""
    feats: list[nn.Module] = [conv_bn(3, 8, 3, 2, act=nn.Hardswish)]
    cfg = [(8, 8, 2, 1, 3, nn.ReLU, True), (8, 16, 1, 3, 3, nn.ReLU, False),
           (16, 16, 2, 3, 5, nn.Hardswish, True), (16, 16, 1, 3, 5, nn.Hardswish, True)]
    for cin, cout, s, t, k, act, use_se in cfg:
        se = SqueezeExcite(cin * t, 8, nn.ReLU, nn.Hardsigmoid) if use_se else None
        feats.append(InvertedResidual(cin, cout, s, t, k, act, se))
    feats.append(conv_bn(16, 32, 1, act=nn.Hardswish))
    head = nn.Sequential(nn.Linear(32, 32), nn.Hardswish(), nn.Dropout(), nn.Linear(32, 10))
    return _Features(feats, 32, head)


def efficientnet() -> nn.Module:
    """EfficientNet-B0 style: SiLU, MBConv with sigmoid-gated SE."""
    feats: list[nn.Module] = [conv_bn(3, 8, 3, 2, act=nn.SiLU)]
    cfg = [(8, 8, 1, 1, 3), (8, 16, 2, 4, 3), (16, 16, 1, 4, 5), (16, 24, 2, 4, 5)]
    for cin, cout, s, t, k in cfg:
        se = SqueezeExcite(cin * t, max(2, cin // 4), nn.SiLU, nn.Sigmoid)
        feats.append(InvertedResidual(cin, cout, s, t, k, nn.SiLU, se))
    feats.append(conv_bn(24, 32, 1, act=nn.SiLU))
    return _Features(feats, 32, nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor, via permute to channels-last and back."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: dwconv 7x7, permute NHWC, LayerNorm, Linear 4x, GELU, Linear, scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)  # type: ignore[no-any-return]


class ConvNeXt(nn.Module):
    """ConvNeXt-T layout at tiny width: ``downsample_layers.N``, ``stages.N``, ``head``."""

    def __init__(self, dims: tuple[int, ...] = (8, 16, 24, 32)) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
            + [nn.Sequential(LayerNorm2d(a, eps=1e-6), nn.Conv2d(a, b, 2, 2))
               for a, b in zip(dims, dims[1:], strict=False)])
        self.stages = nn.ModuleList(
            [nn.Sequential(ConvNeXtBlock(d), ConvNeXtBlock(d)) if i == 2 else
             nn.Sequential(ConvNeXtBlock(d)) for i, d in enumerate(dims)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], 10)

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean((-2, -1))))  # type: ignore[no-any-return]


class DenseLayer(nn.Module):
    """DenseNet layer: BN-ReLU-1x1-BN-ReLU-3x3, output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(2 * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(self.relu1(self.norm1(x)))
        return torch.cat([x, self.conv2(self.relu2(self.norm2(y)))], 1)


def densenet(growth: int = 4) -> nn.Module:
    """DenseNet: dense blocks of concatenating layers, transitions (1x1 conv, avg pool)."""
    feats: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1, bias=False)]
    c = 8
    for b in range(3):
        feats += [DenseLayer(c + i * growth, growth) for i in range(3)]
        c += 3 * growth
        if b < 2:
            feats += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                      nn.AvgPool2d(2)]
            c //= 2
    feats += [nn.BatchNorm2d(c), nn.ReLU()]
    return _Features(feats, c, nn.Linear(c, 10))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave ``groups`` channel groups (view, transpose, flatten back)."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        bin_ = cin if stride > 1 else half
        self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, cin, None),
                                     conv_bn(cin, half, 1)) if stride > 1 else nn.Identity()
        self.branch2 = nn.Sequential(conv_bn(bin_, half, 1), conv_bn(half, half, 3, stride, half,
                                                                     None), conv_bn(half, half, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2: ``conv1``, ``maxpool``, ``stage2..stage4``, ``conv5``, ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8, 3, 1)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
        self.stage4 = nn.Sequential(ShuffleUnit(32, 32, 2), ShuffleUnit(32, 32, 1))
        self.conv5 = conv_bn(32, 48, 1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.conv5(x).mean((2, 3)))  # type: ignore[no-any-return]


class UNet(nn.Module):
    """Two-level UNet: ``enc1``, ``enc2``, ``bottleneck``, ``up2``/``dec2``, ``up1``/``dec1``,
    ``head`` giving (N, K, H, W) class logits."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn(3, 8), conv_bn(8, 8))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_bn(8, 16), conv_bn(16, 16))
        self.bottleneck = nn.Sequential(nn.MaxPool2d(2), conv_bn(16, 32))
        self.up2 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.dec2 = conv_bn(32, 16)
        self.up1 = nn.ConvTranspose2d(16, 8, 2, 2)
        self.dec1 = conv_bn(16, 8)
        self.head = nn.Conv2d(8, k, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        b = self.bottleneck(e2)
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)  # type: ignore[no-any-return]


def groupnorm_net() -> nn.Module:
    """Plain conv net normalised with GroupNorm (4 groups) instead of BatchNorm."""
    feats: list[nn.Module] = []
    cin = 3
    for cout in (8, 16, 32):
        feats += [nn.Conv2d(cin, cout, 3, 2, 1), nn.GroupNorm(4, cout), nn.ReLU()]
        cin = cout
    return _Features(feats, cin, nn.Linear(cin, 10))


class AdaptivePoolNet(nn.Module):
    """Convs down to 7x7, then ``AdaptiveAvgPool2d(3)`` (non-divisible bins), ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(16 * 9, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))  # type: ignore[no-any-return]


def pixelshuffle_net() -> nn.Module:
    """Super-resolution head: conv to 3*r*r channels, ``PixelShuffle(2)``; (N, 3, 2H, 2W)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 12, 3, padding=1), nn.PixelShuffle(2))


class Attention(nn.Module):
    """Multi-head self-attention on (N, T, C) tokens, written out (qkv, softmax, proj)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(n, t, c)
        return self.proj(y)  # type: ignore[no-any-return]


class Mlp(nn.Module):
    """Linear, GELU, Linear on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # type: ignore[no-any-return]


class ViTBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


class TinyViT(nn.Module):
    """ViT: 8x8 patch embed on 32 px (4x4 tokens), class token, position embedding,
    ``blocks.N``, ``norm``, ``head`` on the class token."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(ViTBlock(dim), ViTBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])  # type: ignore[no-any-return]


class SwinBlock(nn.Module):
    """Swin-style block on a channels-last (N, H, W, C) map: LayerNorm, window attention
    (non-overlapping ``window`` x ``window`` windows), LayerNorm, MLP, both residual."""

    def __init__(self, dim: int, window: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.window = window
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        n, h, w, c = x.shape
        s = self.window
        y = self.norm1(x).view(n, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        y = self.attn(y.reshape(-1, s * s, c)).view(n, h // s, w // s, s, s, c)
        x = x + y.permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


class TinySwin(nn.Module):
    """Swin layout: ``patch_embed`` (conv 4x4 then permute NHWC + LayerNorm), ``layers.N``
    of Swin blocks on channels-last maps, patch merging between them, ``head``."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.embed_norm = nn.LayerNorm(dim)
        self.layers = nn.Sequential(nn.Sequential(SwinBlock(dim)),
                                    PatchMerging(dim), nn.Sequential(SwinBlock(2 * dim)))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        x = self.norm(self.layers(x))
        return self.head(x.mean((1, 2)))  # type: ignore[no-any-return]


class PatchMerging(nn.Module):
    """Swin patch merging: 2x2 neighbours concatenated on channels, LayerNorm, Linear 4C->2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, -1)))  # type: ignore[no-any-return]


def mixed_activations() -> nn.Module:
    """Conv net whose activations are Mish, PReLU (per channel), ELU and LeakyReLU."""
    feats: list[nn.Module] = [
        nn.Conv2d(3, 8, 3, 1, 1), nn.Mish(), nn.Conv2d(8, 16, 3, 2, 1), nn.PReLU(16),
        nn.Conv2d(16, 16, 3, 1, 1), nn.ELU(), nn.Conv2d(16, 24, 3, 2, 1), nn.LeakyReLU(0.1)]
    return _Features(feats, 24, nn.Linear(24, 10))


# ---------------------------------------------------------------------------------- registry

#: name -> (constructor, input shape (N, C, H, W)).
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int, int]]] = {
    "resnet": (ResNet, (1, 3, 32, 32)),
    "vgg": (vgg, (1, 3, 32, 32)),
    "mobilenet_v2": (mobilenet_v2, (1, 3, 32, 32)),
    "mobilenet_v3": (mobilenet_v3, (1, 3, 32, 32)),
    "efficientnet": (efficientnet, (1, 3, 32, 32)),
    "convnext": (ConvNeXt, (1, 3, 64, 64)),
    "densenet": (densenet, (1, 3, 32, 32)),
    "shufflenet_v2": (ShuffleNetV2, (1, 3, 32, 32)),
    "resnext": (lambda: ResNet((8, 16, 16, 32), groups=4), (1, 3, 32, 32)),
    "unet": (UNet, (1, 3, 32, 32)),
    "groupnorm": (groupnorm_net, (1, 3, 32, 32)),
    "adaptive_pool": (AdaptivePoolNet, (1, 3, 28, 28)),
    "pixelshuffle": (pixelshuffle_net, (1, 3, 32, 32)),
    "vit": (TinyViT, (1, 3, 32, 32)),
    "swin": (TinySwin, (1, 3, 32, 32)),
    "mixed_act": (mixed_activations, (1, 3, 32, 32)),
}
#: Models also exported with a dynamic batch, height and width (fully convolutional up to a
#: global pool, so any size that keeps the strides whole runs) -> another (H, W) they accept.
DYNAMIC: dict[str, tuple[int, int]] = {
    "resnet": (48, 40), "mobilenet_v2": (40, 48), "convnext": (96, 64), "unet": (24, 40)}
#: (name, dynamo) pairs torch cannot export, with torch's reason.
UNSUPPORTED: dict[tuple[str, bool], str] = {
    ("adaptive_pool", False): "TorchScript exporter: adaptive_avg_pool2d output size that is "
                              "not a factor of the input size",
}


def build(name: str) -> nn.Module:
    """Return zoo model ``name`` with seeded random weights (and BN statistics), in eval mode."""
    ctor, _ = ZOO[name]
    torch.manual_seed(0)
    model = ctor()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):  # non-trivial running stats so BN is not identity
            assert mod.running_mean is not None and mod.running_var is not None
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return model.eval()


def sample_input(name: str, *, batch: int | None = None, seed: int = 0) -> Tensor:
    """Return a seeded (N, C, H, W) float32 input for ``name`` (its shape, batch overridable)."""
    shape = list(ZOO[name][1])
    if batch is not None:
        shape[0] = batch
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def export(name: str, path: Path, *, dynamo: bool, dynamic: bool = False) -> Path:
    """Export zoo model ``name`` to ``path`` (an ``.onnx`` file) and return ``path``.

    Args:
        name: a key of ``ZOO``.
        path: target file; the dynamo exporter also writes ``<path>.data`` beside it.
        dynamo: True for the default dynamo exporter (opset 20 by default); False for the
            TorchScript exporter at opset 17.
        dynamic: export batch, height and width as symbolic dims (names in ``DYNAMIC`` only).

    Returns:
        ``path``.
    """
    if dynamic and name not in DYNAMIC:
        raise ValueError(f"{name!r} has no dynamic export; choose one of {sorted(DYNAMIC)}")
    model, x = build(name), sample_input(name, batch=2 if dynamic else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if dynamo:
            dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"],
                              output_names=["output"],
                              dynamic_shapes=(dims,) if dynamic else None)
        else:
            axes = {"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N"}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes=axes if dynamic else None)
    return path
