"""autodiff: gradients of exported torch networks equal torch autograd; transform properties."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz.autodiff import differentiate
from onnx_featviz.autodiff.graph import infer_types
from onnx_featviz.errors import LayerNotFoundError, ModelError
from tests import graphs, reference

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

REL_TOL = 1e-5


def run(model: onnx.ModelProto, feeds: dict[str, NDArray[np.float32]]) -> list[NDArray]:
    """Run a model on onnxruntime CPU."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]


def rel_err(a: NDArray, b: NDArray) -> float:
    """max|a-b| / max|b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def export(module: torch.nn.Module, shape: tuple[int, ...], opset: int = 13) -> onnx.ModelProto:
    """Export an eval-mode module (BN kept) with a dynamic batch axis."""
    buf = io.BytesIO()
    module.eval()
    torch.onnx.export(module, (torch.zeros(shape),), buf, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], do_constant_folding=False,
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


def find_tensor(model: onnx.ModelProto, x: NDArray, value: NDArray) -> str:
    """Name of the node output whose value on ``x`` equals ``value`` (the torch probe)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    names = [o for n in work.graph.node if n.op_type not in ("Constant", "Identity")
             for o in n.output if o]
    types = infer_types(work)
    names = [n for n in names if types.get(n, (0, None))[0] == TensorProto.FLOAT]
    del work.graph.output[:]
    work.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                             for n in names)
    outs = run(work, {"x": x})
    for name, out in zip(names, outs, strict=True):
        if out.shape == value.shape and np.allclose(out, value, rtol=1e-4, atol=1e-5):
            return name
    raise AssertionError("probe tensor not found in the exported graph")


class Probe(nn.Module):
    """Identity that records its input and keeps its gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.requires_grad:
            t.retain_grad()
        self.value = t
        return t


# ---------------------------------------------------------------------- architectures
class PlainCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2)
        self.probe, self.fc = Probe(), nn.Linear(8 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.probe(self.c1(x))), 2)
        return self.fc(torch.flatten(F.relu(self.c2(h)), 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.probe, self.fc = Probe(), nn.Linear(8, 4)
        for bn in (self.bn0, self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(self.probe(self.stem(x))))
        r = self.bn2(self.c2(F.relu(self.bn1(self.c1(h)))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(h + r), 1).flatten(1))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.dil = nn.Conv2d(8, 6, 3, padding=2, dilation=2)
        self.probe = Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.probe(self.c1(x)))
        h = F.relu6(self.dw(h))
        return F.avg_pool2d(self.dil(h), 2).flatten(1)


class MobileNetStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.pw, self.probe, self.fc = nn.Conv2d(8, 6, 1), Probe(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardswish(self.bn(self.c1(x)))
        h = F.hardswish(self.probe(self.dw(h)))
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(h, 1)))))
        return self.fc(F.adaptive_avg_pool2d(self.pw(h * s), 1).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.probe = nn.Conv2d(3, 8, 3, padding=1), Probe()
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.out = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.probe(self.c1(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean(dim=(2, 3))))))
        h = h * s[:, :, None, None]
        return self.out(h.amax(dim=(2, 3)))


class ConvNeXtStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.probe = nn.Conv2d(3, 8, 2, stride=2), Probe()
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.norm = nn.LayerNorm(8)
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head_norm, self.head = nn.LayerNorm(8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.probe(self.stem(x))
        t = self.dw(h).permute(0, 2, 3, 1)
        t = self.down(F.gelu(self.up(self.norm(t)))).permute(0, 3, 1, 2)
        h = h + t
        return self.head(self.head_norm(h.mean(dim=(2, 3))))


class DenseConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0, self.c1 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c2, self.c3 = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(12, 6, 1)
        self.probe = Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.probe(self.c0(x)))
        b = torch.cat([a, F.relu(self.c1(a))], 1)
        c = torch.cat([b, F.relu(self.c2(b))], 1)
        a1, a2 = torch.split(self.c3(c), [2, 4], dim=1)
        return (a1.sum(dim=1) * a2.mean(dim=1)).flatten(1)


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.probe = nn.Conv2d(3, 4, 3, padding=1), Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.probe(self.c1(x))
        a = F.max_pool2d(h, 3, stride=2, ceil_mode=True)
        b = F.avg_pool2d(h, 3, stride=2, padding=1, count_include_pad=True)
        c = F.avg_pool2d(h, 3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        d = F.max_pool2d(h, 2, stride=2, padding=1)
        e = F.avg_pool2d(h, 2, ceil_mode=True)
        return torch.cat([t.flatten(1) for t in (a, b, c, d, e)], 1)


class ReluPools(nn.Module):
    """Relu -> MaxPool pairs (the backward applies the Relu mask at the pooled size): a
    ResNet-style padded 3x3/2 stem pool, a SqueezeNet-style 3x3/2 ceil-mode pool, and a Relu
    whose output also feeds another branch (not paired)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.probe = nn.Conv2d(3, 4, 3, padding=1), Probe()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.probe(self.c1(x))
        a = F.max_pool2d(F.relu(h), 3, stride=2, padding=1)
        b = F.max_pool2d(F.relu(self.c2(a)), 3, stride=2, ceil_mode=True)
        r = F.relu(h - 0.1)
        c = F.max_pool2d(r, 2) * 2 + F.avg_pool2d(r, 2)
        return torch.cat([t.flatten(1) for t in (b, c)], 1)


class Upsampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.probe = nn.Conv2d(3, 4, 3, stride=2, padding=1), Probe()
        self.c2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.probe(self.c1(x)))
        a = F.interpolate(h, scale_factor=2, mode="nearest")
        b = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        c = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)
        return self.c2(torch.cat([a + c, b], 1))


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.probe = nn.Conv2d(3, 6, 3), Probe()
        self.prelu, self.fc = nn.PReLU(6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.probe(self.c1(x))
        h = F.leaky_relu(h, 0.1) + F.elu(h) + F.selu(h) + F.softplus(h) + torch.tanh(h)
        h = self.prelu(h) + torch.exp(-h * h) + torch.sqrt(h * h + 1) + torch.abs(h) - 1 / (
            2 + h * h)
        h = h.pow(2) * 0.1 + torch.log(1 + h * h)
        return F.log_softmax(self.fc(h.mean(dim=(2, 3))), dim=1) + F.softmax(h.amax(
            dim=(2, 3)), dim=1).sum(1, keepdim=True)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.probe = nn.Conv2d(3, 4, 3, stride=2, padding=1), Probe()
        self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(4, 2, 2, stride=2, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.probe(self.c1(x)))
        h = self.up(h)[:, :, 1:-1, 2:]
        h = F.pad(h, (1, 0, 2, 1))
        return self.up2(F.relu(h)).transpose(2, 3).reshape(x.shape[0], -1)[:, ::1][:, 3:40]


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.probe = nn.Conv2d(3, 8, 2, stride=2), Probe()
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.probe(self.c1(x)).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1)
        out = self.proj(att @ v)
        return out[:, 0] + out.mean(1)


ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "plain_cnn": (PlainCNN, (2, 3, 10, 10), 13),
    "residual_bn": (Residual, (2, 3, 8, 8), 13),
    "grouped_depthwise_dilated": (Grouped, (2, 4, 9, 9), 13),
    "mobilenet_hardswish": (MobileNetStyle, (2, 3, 10, 10), 14),
    "squeeze_excite": (SqueezeExcite, (2, 3, 7, 7), 13),
    "convnext_layernorm_gelu": (ConvNeXtStyle, (2, 3, 8, 8), 17),
    "dense_concat_split": (DenseConcat, (2, 3, 6, 6), 13),
    "pools": (Pools, (2, 3, 9, 9), 13),
    "relu_maxpool": (ReluPools, (2, 3, 11, 11), 13),
    "upsampling": (Upsampling, (2, 3, 8, 8), 13),
    "activations_softmax": (Activations, (2, 3, 6, 6), 13),
    "decoder_convtranspose_slice_pad": (Decoder, (2, 3, 8, 8), 13),
    "attention_matmul": (Attention, (2, 3, 8, 8), 13),
}


def _torch_reference(module: nn.Module, x: NDArray[np.float32], seed: NDArray[np.float32]
                     ) -> tuple[NDArray, NDArray, NDArray]:
    """float64 torch forward/backward: (y, d/dx, d/dprobe)."""
    module = module.double()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = module(xt)
    (y * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    probe = module.probe.value
    assert probe is not None and probe.grad is not None and xt.grad is not None
    return y.detach().numpy(), xt.grad.numpy(), probe.grad.numpy()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_matches_torch_autograd(arch: str) -> None:
    make_module, shape, opset = ARCHS[arch]
    torch.manual_seed(0)
    module = make_module()
    model = export(module, shape, opset)
    before = model.SerializeToString()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        module(torch.tensor(x))
    assert module.probe.value is not None
    probe_name = find_tensor(model, x, module.probe.value.numpy())
    y32 = run(model, {"x": x})[0]
    seed = rng.standard_normal(y32.shape).astype(np.float32)
    y_ref, gx_ref, gp_ref = _torch_reference(module, x, seed)
    gm = differentiate(model, "y", ["x", probe_name])
    assert model.SerializeToString() == before
    onnx.checker.check_model(gm.model)
    y, gx, gp = run(gm.model, {"x": x, gm.seed: seed})
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(gx, gx_ref) <= REL_TOL, arch
    assert rel_err(gp, gp_ref) <= REL_TOL, arch


# ---------------------------------------------------------------------- transform properties
def test_guided_backprop_matches_numpy_reference() -> None:
    model = graphs.conv_relu_conv()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    seed = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = reference.conv2d(x, weights["wa"], pad=1)
    g_r = reference.conv2d_input_grad(seed, weights["wb"], h.shape, pad=1)
    g_h = np.maximum(g_r, 0) * (h > 0)
    expected = reference.conv2d_input_grad(g_h, weights["wa"], x.shape, pad=1)
    gm = differentiate(model, "y", ["x", "h"], guided=True)
    _, gx, gh = run(gm.model, {"x": x, gm.seed: seed})
    np.testing.assert_allclose(gh, g_h, atol=1e-5)
    np.testing.assert_allclose(gx, expected, atol=1e-5)
    plain = differentiate(model, "y", ["x"])
    assert not np.allclose(run(plain.model, {"x": x, plain.seed: seed})[1], gx)


@pytest.mark.parametrize(("domain", "op"), [("", "Bernoulli"), ("com.example", "Mystery")])
def test_unsupported_op_on_path_names_op_and_node(domain: str, op: str) -> None:
    model = graphs.with_op_on_side(domain, op, on_path=True)
    with pytest.raises(ModelError) as err:
        differentiate(model, "y", ["x"])
    text = str(err.value)
    assert op in text and "'odd'" in text and "Score-CAM" in text and "occlusion" in text


def test_unsupported_op_off_path_is_fine() -> None:
    model = graphs.with_op_on_side("", "TopK", on_path=False)
    gm = differentiate(model, "y", ["x"])
    x = np.asarray([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    y, gx = run(gm.model, {"x": x, gm.seed: np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(gx, [[0, 1, 0, 1]])


def test_one_model_serves_any_seed_and_batch() -> None:
    model = graphs.small_cnn()
    gm = differentiate(model, "logits", ["x", "c2"], keep_outputs=["r2"])
    assert gm.outputs == ("logits", "r2")
    assert gm.gradients == (("x", "featviz/grad/x"), ("c2", "featviz/grad/c2"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    seeds = np.eye(10, dtype=np.float32)[[1, 4, 7]]
    sess = ort.InferenceSession(gm.model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, r2, gx, gc2 = sess.run(None, {"x": x, gm.seed: seeds})
    assert r2.shape == (3, 8, 8, 8) and gx.shape == x.shape and gc2.shape == (3, 8, 8, 8)
    for i in range(3):
        single = sess.run(None, {"x": x[i:i + 1], gm.seed: seeds[i:i + 1]})
        np.testing.assert_allclose(single[2][0], gx[i], atol=1e-6)
    other = sess.run(None, {"x": x, gm.seed: np.eye(10, dtype=np.float32)[[0, 0, 0]]})[2]
    assert not np.allclose(other, gx)
    assert logits.shape == (3, 10)


def _small_cnn_grad(model: onnx.ModelProto, x: NDArray[np.float32],
                    seed: NDArray[np.float32], wrt: str = "x") -> NDArray[np.float32]:
    gm = differentiate(model, "logits", [wrt])
    feeds = {"x": x.astype(np.float32), gm.seed: seed}
    seed_type = gm.model.graph.input[-1].type.tensor_type.elem_type
    if seed_type == TensorProto.FLOAT16:
        feeds[gm.seed] = seed.astype(np.float16)
    return run(gm.model, feeds)[1]


def test_fp16_model_gradient_close_to_float_model() -> None:
    from onnxconverter_common import float16

    model = graphs.small_cnn()
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    half.ir_version = model.ir_version
    before = half.SerializeToString()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    seed = rng.standard_normal((2, 10)).astype(np.float32)
    g32, g16 = _small_cnn_grad(model, x, seed), _small_cnn_grad(half, x, seed)
    assert half.SerializeToString() == before
    assert g16.dtype == np.float32
    # float16 rounding may move a few MaxPool argmaxes: compare in the mean, and exactly at c2
    assert float(np.abs(g16 - g32).mean() / np.abs(g32).mean()) < 2e-2
    c2 = [_small_cnn_grad(m, x, seed, "c2") for m in (model, half)]
    assert c2[1].dtype == np.float32
    # elementwise rtol 1e-2 (of the largest value) except where float16 flips a Relu mask
    close = np.abs(c2[1] - c2[0]) <= 1e-2 * np.abs(c2[0]).max()
    assert close.mean() >= 0.99


def test_qdq_model_gradient_is_finite_and_straight_through() -> None:
    model = graphs.small_cnn()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    qdq = graphs.qdq_model(model, x)
    assert any(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    seed = rng.standard_normal((2, 10)).astype(np.float32)
    gq, gf = _small_cnn_grad(qdq, x, seed), _small_cnn_grad(model, x, seed)
    assert np.isfinite(gq).all() and np.abs(gq).max() > 0
    cosine = float((gq * gf).sum() / np.linalg.norm(gq) / np.linalg.norm(gf))
    assert cosine > 0.8


def test_legacy_opset7_is_raised_with_meaning_kept() -> None:
    model = graphs.legacy_opset7()
    before = model.SerializeToString()
    gm = differentiate(model, "y", ["x", "r"])
    assert model.SerializeToString() == before
    assert gm.model.ir_version == 3
    assert [o.version for o in gm.model.opset_import if o.domain == ""] == [16]
    ops = {n.op_type for n in gm.model.graph.node}
    assert "Upsample" not in ops and "Dropout" not in ops
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    seed = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    y_old = run(model, {"x": x})[0]
    y_new, gx, _ = run(gm.model, {"x": x, gm.seed: seed})
    np.testing.assert_allclose(y_new, y_old, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y_old.sum(), 1.0, rtol=1e-5)  # softmax over 48 values
    direction = rng.standard_normal(x.shape).astype(np.float32)
    eps = 1e-2
    f = [float((run(model, {"x": x + s * eps * direction})[0] * seed).sum()) for s in (1, -1)]
    np.testing.assert_allclose((f[0] - f[1]) / (2 * eps), float((gx * direction).sum()),
                               rtol=2e-2, atol=1e-5)


def test_errors_name_the_problem() -> None:
    model = graphs.small_cnn()
    with pytest.raises(ModelError, match="weight"):
        differentiate(model, "logits", ["w1"])
    with pytest.raises(LayerNotFoundError, match="close matches: c1"):
        differentiate(model, "logits", ["c1x"])
    with pytest.raises(LayerNotFoundError, match="(of)"):
        differentiate(model, "logit", ["x"])
    with pytest.raises(ModelError, match="does not depend"):
        differentiate(model, "c1", ["c2"])
    with pytest.raises(ModelError, match="seed name"):
        differentiate(model, "logits", ["x"], seed_name="c1")
    with pytest.raises(ModelError, match="wrt is empty"):
        differentiate(model, "logits", [])


def test_transform_is_deterministic() -> None:
    model = graphs.small_cnn()
    first = differentiate(model, "logits", ["x", "c1"]).model.SerializeToString()
    assert differentiate(model, "logits", ["x", "c1"]).model.SerializeToString() == first


@pytest.mark.slow
def test_squeezenet_caffe2_fp16_opset7() -> None:
    from tests.conftest import shared_path

    model = onnx.load(shared_path("models", "squeezenet1.1_caffe2_fp16.onnx"))
    before = model.SerializeToString()
    conv = [n for n in model.graph.node if n.op_type == "Conv"][-2].output[0]
    gm = differentiate(model, "pool10_1", ["data_0", conv], keep_outputs=["softmaxout_1"])
    assert model.SerializeToString() == before
    onnx.checker.check_model(gm.model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float16)
    seed = np.zeros((1, 1000, 1, 1), np.float16)
    seed[0, 281] = 1
    logits, probs, gx, gconv = run(gm.model, {"data_0": x, gm.seed: seed})
    np.testing.assert_allclose(probs, run(model, {"data_0": x})[0], atol=1e-4)
    assert gx.dtype == np.float32 and gx.shape == x.shape and np.isfinite(gx).all()
    assert np.abs(gconv).max() > 0 and np.isfinite(gconv).all()


@pytest.mark.parametrize("fp16", [False, True])
def test_seed_top1_equals_an_explicit_one_hot_seed(fp16: bool) -> None:
    from onnx_featviz.autodiff import seed_top1

    model = graphs.small_cnn()
    if fp16:
        model = graphs.fp16_model(model)
    dtype = np.float16 if fp16 else np.float32
    x = np.random.default_rng(5).standard_normal((4, 3, 16, 16)).astype(dtype)
    grad = differentiate(model, of="logits", wrt=["r2"], keep_outputs=["r2"])
    before = grad.model.SerializeToString()
    fused = seed_top1(grad)
    assert grad.model.SerializeToString() == before and fused.seed == ""
    assert [i.name for i in fused.model.graph.input] == ["x"]
    onnx.checker.check_model(fused.model, full_check=True)
    names = [o.name for o in fused.model.graph.output]
    got = dict(zip(names, run(fused.model, {"x": x}), strict=True))
    logits = run(model, {"x": x})[0]
    top = logits.reshape(4, -1).argmax(axis=1)
    np.testing.assert_array_equal(got[fused.outputs[-1]], top)
    seed = np.zeros(logits.shape, dtype)
    seed[np.arange(4), top] = 1
    ref = dict(zip([o.name for o in grad.model.graph.output],
                   run(grad.model, {"x": x, grad.seed: seed}), strict=True))
    np.testing.assert_array_equal(got[grad.gradient("r2")], ref[grad.gradient("r2")])


def test_seed_top1_with_a_classes_input_equals_an_explicit_one_hot_seed() -> None:
    from onnx_featviz.autodiff import seed_top1

    model = graphs.small_cnn()
    x = np.random.default_rng(6).standard_normal((3, 3, 16, 16)).astype(np.float32)
    grad = differentiate(model, of="logits", wrt=["x"])
    fused = seed_top1(grad, classes="featviz/classes")
    assert [i.name for i in fused.model.graph.input] == ["x", "featviz/classes"]
    onnx.checker.check_model(fused.model, full_check=True)
    classes = np.array([2, 0, 2], np.int64)
    names = [o.name for o in fused.model.graph.output]
    got = dict(zip(names, run(fused.model, {"x": x, "featviz/classes": classes}), strict=True))
    np.testing.assert_array_equal(got[fused.outputs[-1]], classes)
    logits = run(model, {"x": x})[0]
    seed = np.zeros(logits.shape, np.float32)
    seed[np.arange(3), classes] = 1
    ref = dict(zip([o.name for o in grad.model.graph.output],
                   run(grad.model, {"x": x, grad.seed: seed}), strict=True))
    np.testing.assert_array_equal(got[grad.gradient("x")], ref[grad.gradient("x")])


def test_relu_before_maxpool_is_masked_at_the_pooled_size() -> None:
    """A Relu whose output only a MaxPool reads gets its mask from the pooled output (the
    gradients themselves are checked against torch in test_matches_torch_autograd)."""
    torch.manual_seed(0)
    model = export(ReluPools(), (2, 3, 11, 11), 13)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    paired = [r for r in relus if [n.op_type for n in readers[r]] == ["MaxPool"]]
    shared = [r for r in relus if len(readers[r]) > 1]
    assert len(paired) == 2 and len(shared) == 1
    for guided in (False, True):
        gm = differentiate(model, "y", ["x"], guided=guided)
        backward = [n for n in gm.model.graph.node if n.name.startswith("featviz/grad/")]
        reads = {name: sorted(n.op_type for n in backward
                              if name in n.input and n.op_type != "Shape") for name in relus}
        for name in paired:  # the re-emitted MaxPool only; guided mode keeps the Relu rule
            assert reads[name] == (["Greater", "MaxPool"] if guided else ["MaxPool"]), name
        assert "Greater" in reads[shared[0]]
