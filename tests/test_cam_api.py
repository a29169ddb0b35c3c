"""Inspector.cam / Inspector.backprop and the ``featviz cam``/``backprop`` commands."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx_featviz import api
from onnx_featviz.attribution import run as attribution_run
from onnx_featviz.cli.commands import main
from onnx_featviz.errors import InputError, LayerNotFoundError
from onnx_featviz.graph import masking
from onnx_featviz.graph import rewrite as rewrite
from tests import graphs
from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_cnn.onnx"
DIGIT = ROOT / "models" / "samples" / "digit_9.png"
# The cat fills most of the 224x224 caffe crop; this box holds its face (eyes to chin), 78% of
# the area, measured once on the crop. Grad-CAM put 0.82 of its mass inside it.
CAT_BOX = (20, 210, 10, 215)  # y0, y1, x0, x1
# The retriever runs through water; its head (y 5..80, x 5..105 of the crop, 15 % of the area)
# holds 0.46 of Grad-CAM's mass and 0.36 of Score-CAM's, measured once; both peak there.
DOG_HEAD_BOX = (5, 80, 5, 105)


def _torch_net() -> tuple[object, onnx.ModelProto]:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), buf, dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return net, onnx.load_from_string(buf.getvalue())


def _batch() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)


def _count_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, append 1 to the returned list at every onnxruntime session call."""
    calls: list[int] = []
    real_run = attribution_run.runtime.Session.run

    def counted(self: object, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return real_run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attribution_run.runtime.Session, "run", counted)
    return calls


@pytest.mark.parametrize("target", [None, 1])
def test_grad_cam_matches_torch_autograd(target: int | None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-1 or a given class: one session call (the seed is built in the gradient graph)."""
    torch = pytest.importorskip("torch")
    net, model = _torch_net()
    x = _batch()
    with api.Inspector(model, "cpu") as inspector:
        inspector.cam(x, api.CamOptions("grad_cam", target=target, overlays=False))
        calls = _count_runs(monkeypatch)
        report = inspector.cam(x, api.CamOptions("grad_cam", target=target))
    assert len(calls) == 1
    np.testing.assert_array_equal(report.rank, [0 if target is None else -1] * 3)
    acts = net[:5](torch.from_numpy(x))  # type: ignore[index]
    acts.retain_grad()
    logits = net[5:](acts)  # type: ignore[index]
    targets = logits.argmax(dim=1) if target is None else torch.full((3,), target)
    logits.gather(1, targets[:, None]).sum().backward()
    weights = acts.grad.mean(dim=(2, 3), keepdim=True)
    expected = torch.relu((weights * acts).sum(dim=1)).detach().numpy()
    np.testing.assert_array_equal(report.targets, targets.numpy())
    np.testing.assert_allclose(report.layer_cam, expected, atol=1e-4, rtol=1e-4)
    assert report.cam.shape == (3, 16, 16) and report.layer_cam.shape == (3, 8, 8)
    assert 0.0 <= report.cam.min() and report.cam.max() <= 1.0
    assert len(report.overlays) == 3 and report.overlays[0].size == (16, 16)


def test_saliency_matches_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    net, model = _torch_net()
    x = _batch()
    with api.Inspector(model, "cpu") as inspector:
        sal = inspector.backprop(x, "saliency", target=2)
    xt = torch.from_numpy(x).requires_grad_(True)
    net(xt)[:, 2].sum().backward()  # type: ignore[operator]
    raw = xt.grad.abs().amax(dim=1).numpy()
    lo = raw.min(axis=(1, 2), keepdims=True)
    hi = raw.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(sal, (raw - lo) / (hi - lo), atol=1e-4)


@pytest.mark.parametrize("target", [None, 3])
@pytest.mark.parametrize("method", ["saliency", "guided"])
def test_backprop_is_one_pass_and_matches_torch(method: str, target: int | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row explains its arg-max class (picked in the gradient graph itself) or the
    target: one session call, the same classes and gradients as torch autograd."""
    torch = pytest.importorskip("torch")
    net, model = _torch_net()
    x = _batch()
    with api.Inspector(model, "cpu") as inspector:
        inspector.backprop(x, method)  # builds the session
        calls = _count_runs(monkeypatch)
        views, targets = attribution_run.backprop_rows(inspector, x, method, target)
        assert len(calls) == 1
        with pytest.raises(InputError, match="out of range for 5 classes"):
            inspector.backprop(x, method, target=5)
    hooks = []
    if method == "guided":  # guided backprop: ReLUs pass only positive gradients back
        hooks = [m.register_full_backward_hook(lambda _m, gi, _go: (torch.relu(gi[0]),))
                 for m in net if isinstance(m, torch.nn.ReLU)]  # type: ignore[attr-defined]
    xt = torch.from_numpy(x).requires_grad_(True)
    out = net(xt)  # type: ignore[operator]
    best = out.argmax(dim=1) if target is None else torch.full((len(x),), target)
    out.gather(1, best[:, None]).sum().backward()
    for hook in hooks:
        hook.remove()
    np.testing.assert_array_equal(targets, best.numpy())
    g = xt.grad.numpy()
    if method == "saliency":
        raw = np.abs(g).max(axis=1)
        lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(views, (raw - lo) / (hi - lo), atol=1e-4)
    else:
        mean, std = g.mean(axis=(1, 2, 3), keepdims=True), g.std(axis=(1, 2, 3), keepdims=True)
        expected = np.clip((g - mean) / (std + 1e-5) * 0.1 + 0.5, 0, 1).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(views, expected, atol=1e-4)


def test_fp16_model_gives_finite_cam_and_views() -> None:
    model = graphs.fp16_model(graphs.small_cnn())
    x = _batch().astype(np.float16)
    with api.Inspector(model, "cpu") as inspector:
        report = inspector.cam(x, api.CamOptions("grad_cam"))
        guided = inspector.backprop(x, "guided-gradcam")
    assert report.cam.shape == (3, 16, 16) and np.isfinite(report.cam).all()
    assert report.cam.max() > 0 and np.isfinite(guided).all() and guided.shape == (3, 16, 16, 3)


@pytest.mark.parametrize("method", ["eigen_cam", "score_cam", "occlusion", "grad_cam_pp"])
def test_other_methods_run(method: str) -> None:
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        report = inspector.cam(_batch(), api.CamOptions(method, batch_size=8))
    assert report.cam.shape == (3, 16, 16) and np.isfinite(report.cam).all()
    assert report.layer == "r2" and report.score_tensor == "logits"


def test_layer_without_spatial_dims_refused() -> None:
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        with pytest.raises(InputError, match="spatial"):
            inspector.cam(_batch(), api.CamOptions("grad_cam", layer="fc"))


def test_cut_at_reproduces_the_score() -> None:
    model = graphs.small_cnn()
    before = model.SerializeToString()
    cut = rewrite.cut_at(model, "r2")
    assert model.SerializeToString() == before
    onnx.checker.check_model(cut, full_check=True)
    x = _batch()
    name = model.graph.input[0].name
    full = ort.InferenceSession(rewrite.expose_tensors(model, ["r2", "logits"])
                                .SerializeToString(), providers=["CPUExecutionProvider"])
    r2, logits = full.run(["r2", "logits"], {name: x})
    sess = ort.InferenceSession(rewrite.expose_tensors(cut, ["logits"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["r2"]  # nothing after r2 reads the image
    np.testing.assert_array_equal(sess.run(["logits"], {"r2": r2})[0], logits)
    with pytest.raises(LayerNotFoundError):
        rewrite.cut_at(model, "r_2")


def _skip_net() -> tuple[object, onnx.ModelProto]:
    """A CNN whose head also reads the image (a skip connection from before the CAM layer)."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU())
            self.fc = torch.nn.Linear(8, 5)
            self.skip = torch.nn.Linear(3, 5)

        def head(self, acts: object, x: object) -> object:
            return self.fc(acts.mean(dim=(2, 3))) + self.skip(x.mean(dim=(2, 3)))  # type: ignore[attr-defined]

        def forward(self, x: object) -> object:
            return self.head(self.body(x), x)

    torch.manual_seed(0)
    net = Net().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), buf, dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return net, onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("skip", [False, True])
def test_ablation_cam_matches_torch_channel_zeroing(skip: bool) -> None:
    torch = pytest.importorskip("torch")
    net, model = _skip_net() if skip else _torch_net()
    x = _batch()
    with api.Inspector(model, "cpu") as inspector:
        report = inspector.cam(x, api.CamOptions("ablation_cam", batch_size=7))
        cut = [s for key, s in inspector._sessions.items() if key[0] == "cut"]
        # the skip connection keeps the image an input of the cut model (fed per ablated row)
        assert len(cut) == 1 and ("x" in cut[0].input_types) == skip
    xt = torch.from_numpy(x)
    with torch.no_grad():
        if skip:
            acts = net.body(xt)  # type: ignore[attr-defined]
            head = lambda a: net.head(a, xt)  # type: ignore[attr-defined]  # noqa: E731
        else:
            acts = net[:5](xt)  # type: ignore[index]
            head = net[5:]  # type: ignore[index]
        logits = head(acts)
        targets = logits.argmax(dim=1)
        rows = torch.arange(len(x))
        y = logits[rows, targets].double()
        weights = torch.empty(acts.shape[:2], dtype=torch.float64)
        for k in range(acts.shape[1]):
            ablated = acts.clone()
            ablated[:, k] = 0.0
            weights[:, k] = (y - head(ablated)[rows, targets].double()) / y
        expected = torch.relu((weights[:, :, None, None] * acts.double()).sum(dim=1)).numpy()
    assert (y.abs() > 1e-7).all()  # the 1e-7 guard of cam.ablation_cam does not apply here
    np.testing.assert_array_equal(report.targets, targets.numpy())
    assert report.method == "ablation_cam" and report.layer_cam.shape == (3, 8, 8)
    np.testing.assert_allclose(report.layer_cam, expected, atol=1e-4, rtol=1e-4)
    assert report.cam.shape == (3, 16, 16) and report.layer_cam.max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grad_cam", "score_cam"])
def test_squeezenet_cams_peak_on_the_animal(method: str) -> None:
    model = shared_path("models", "squeezenet1.1_caffe2_fp16.onnx")
    cat = shared_path("images", "cat_chelsea.png")
    dog = shared_path("images", "dog_retriever_water.png")
    with api.Inspector(model, "cpu", prep=api.PrepOptions(preset="caffe")) as inspector:
        report = inspector.cam([cat, dog], api.CamOptions(method))
    assert [int(t) for t in report.targets] == [285, 208]  # Egyptian cat, Labrador retriever
    for heat, (y0, y1, x0, x1), share in ((report.cam[0], CAT_BOX, 0.78),
                                          (report.cam[1], DOG_HEAD_BOX, 0.30)):
        peak_y, peak_x = np.unravel_index(int(heat.argmax()), heat.shape)
        assert y0 <= peak_y < y1 and x0 <= peak_x < x1, (peak_y, peak_x)
        inside = heat[y0:y1, x0:x1].sum() / heat.sum()
        assert inside >= share, inside
    # The dog's head box is 15 % of the crop: a uniform map would put 0.15 of its mass there.


def test_cli_cam_writes_overlay_and_npz(tmp_path: Path) -> None:
    npz = tmp_path / "cam.npz"
    result = CliRunner().invoke(main, ["cam", str(MNIST), str(DIGIT), "--out",
                                       str(tmp_path / "out"), "--save-npz", str(npz),
                                       "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "digit_9" / "cam_grad_cam.png").is_file()
    data = np.load(npz)
    assert data["cam"].shape == (1, 28, 28) and data["target"].shape == (1,)
    assert data["layer_cam"].ndim == 3 and data["layer_cam"].shape[0] == 1


def test_cli_cam_bad_targets(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine"]))
    runner = CliRunner()
    out = runner.invoke(main, ["cam", str(MNIST), str(DIGIT), "--target", "12", "--out",
                               str(tmp_path), "--provider", "cpu"])
    assert out.exit_code == 1 and "out of range" in out.output
    assert len([ln for ln in out.output.splitlines() if ln.startswith("Error")]) == 1
    out = runner.invoke(main, ["cam", str(MNIST), str(DIGIT), "--labels", str(labels),
                               "--target", "fine", "--out", str(tmp_path), "--provider", "cpu"])
    assert out.exit_code == 1 and "close matches" in out.output and "five" in out.output


def test_cli_backprop(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["backprop", str(MNIST), str(DIGIT), "--method", "guided",
                                       "--out", str(tmp_path), "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "digit_9" / "backprop_guided.png").is_file()


def _torch_layer_grads(net: object, x: np.ndarray, targets: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (activations, dS/dA, targets) at the last ReLU of ``_torch_net`` via autograd."""
    torch = pytest.importorskip("torch")
    acts = net[:5](torch.from_numpy(x))  # type: ignore[index]
    acts.retain_grad()
    logits = net[5:](acts)  # type: ignore[index]
    chosen = logits.argmax(dim=1) if targets is None else torch.from_numpy(targets)
    logits.gather(1, chosen[:, None]).sum().backward()
    return (acts.detach().double().numpy(), acts.grad.double().numpy(), chosen.numpy())


def _paper_cam(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The papers' definitions, written independently of ``cam.py`` (numpy float64)."""
    if method == "grad_cam_pp":  # Chattopadhay et al. eq. 19 with the exponential score
        num = g ** 2
        den = 2 * g ** 2 + a.sum(axis=(2, 3), keepdims=True) * g ** 3
        alpha = np.divide(num, den, out=np.zeros_like(num), where=den != 0)
        w = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))[:, :, None, None]
        return np.maximum((w * a).sum(axis=1), 0)
    if method == "xgrad_cam":  # Fu et al.: w_k = sum(A_k / sum(A_k) * g_k)
        w = (a * g).sum(axis=(2, 3)) / (a.sum(axis=(2, 3)) + 1e-7)
        return np.maximum((w[:, :, None, None] * a).sum(axis=1), 0)
    if method == "hires_cam":  # Draelos & Carin: element-wise g * A summed over channels
        return np.maximum((g * a).sum(axis=1), 0)
    assert method == "layer_cam"  # Jiang et al.: ReLU(g) * A, then ReLU of the channel sum
    return np.maximum((np.maximum(g, 0) * a).sum(axis=1), 0)


@pytest.mark.parametrize("method", ["grad_cam_pp", "xgrad_cam", "hires_cam", "layer_cam"])
def test_gradient_cams_match_torch_autograd(method: str) -> None:
    net, model = _torch_net()
    x = _batch()
    with api.Inspector(model, "cpu") as inspector:
        report = inspector.cam(x, api.CamOptions(method))
    a, g, targets = _torch_layer_grads(net, x)
    expected = _paper_cam(method, a, g)
    np.testing.assert_array_equal(report.targets, targets)
    assert expected.max() > 0
    np.testing.assert_allclose(report.layer_cam, expected, atol=1e-4 * expected.max(), rtol=1e-4)
    heat = report.cam
    assert heat.shape == (3, 16, 16) and heat.min() >= 0 and np.isclose(heat.max(), 1.0)


def test_explain_top_gives_one_cam_per_best_class(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    net, model = _torch_net()
    x = _batch()
    with api.Inspector(model, "cpu") as inspector:
        report = inspector.cam(x, api.CamOptions("grad_cam", explain_top=3))
        with pytest.raises(InputError, match="use one"):
            inspector.cam(x, api.CamOptions("grad_cam", explain_top=2, target=1))
    with torch.no_grad():
        order = net(torch.from_numpy(x)).argsort(dim=1, descending=True)[:, :3]  # type: ignore[operator]
    np.testing.assert_array_equal(report.targets, order.reshape(-1).numpy())
    np.testing.assert_array_equal(report.image_index, np.repeat(np.arange(3), 3))
    np.testing.assert_array_equal(report.rank, np.tile(np.arange(3), 3))
    assert report.cam.shape == (9, 16, 16) and len(report.overlays) == 9
    for rank in range(3):  # each row is the Grad-CAM of that class, from torch autograd
        a, g, _ = _torch_layer_grads(net, x, order[:, rank].numpy())
        w = g.mean(axis=(2, 3))[:, :, None, None]
        expected = np.maximum((w * a).sum(axis=1), 0)
        np.testing.assert_allclose(report.layer_cam[rank::3], expected, atol=1e-4, rtol=1e-4)
    rendered = api.render_cam(report)
    names = [p.name for p in rendered.pictures]
    first = names[0].split("/")[0]
    assert f"{first}/cam_grad_cam_top2_class{int(order[0, 1])}.png" in names
    assert len(names) == 18 + 1 and rendered.arrays["image"].tolist() == report.image_index.tolist()
    assert "cam_grad_cam_top3.png" in names  # one sheet: a row per rank, a column per input
    rows = api.cam_to_json(report)
    assert [r["rank"] for r in rows[:3]] == [1, 2, 3]  # as in the _top<rank> names


def test_cli_cam_explain_top(tmp_path: Path) -> None:
    npz = tmp_path / "cam.npz"
    result = CliRunner().invoke(main, ["cam", str(MNIST), str(DIGIT), "--explain-top", "2",
                                       "--out", str(tmp_path / "out"), "--save-npz", str(npz),
                                       "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = np.load(npz)
    assert data["cam"].shape == (2, 28, 28) and data["image"].tolist() == [0, 0]
    assert data["target"][0] == 9  # the sample is a nine
    written = sorted(p.name for p in (tmp_path / "out" / "digit_9").iterdir())
    assert "cam_grad_cam_top1_class9.png" in written and len(written) == 4
    assert (tmp_path / "out" / "cam_grad_cam_top2.png").is_file()  # a row per class rank


@pytest.mark.slow
def test_qdq_mnist_cam_follows_the_float_model() -> None:
    """Gradients pass the QDQ pairs straight through: the int8 CAM matches the float one."""
    digits = sorted((ROOT / "models" / "samples").glob("digit_*.png"))
    with api.Inspector(MNIST, "cpu") as inspector:
        batch = inspector.load_batch(digits).array
        float_report = inspector.cam(batch, api.CamOptions("grad_cam"))
    qdq = graphs.qdq_model(onnx.load(MNIST), batch)
    assert any(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    with api.Inspector(qdq, "cpu") as inspector:
        report = inspector.cam(batch, api.CamOptions("grad_cam"))
        pp = inspector.cam(batch, api.CamOptions("layer_cam"))
    assert report.targets.tolist() == list(range(10)) == float_report.targets.tolist()
    assert np.isfinite(report.cam).all() and np.isfinite(pp.cam).all()
    for ours, ref in zip(report.layer_cam, float_report.layer_cam, strict=True):
        if ref.max() == 0:  # every channel weighs in negatively (the zero): so does int8
            assert ours.max() <= 0.05 * float_report.layer_cam.max()
            continue
        assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99  # measured >= 0.9989
        assert abs(ours.max() / ref.max() - 1) < 0.1


def test_cam_progress_reports_forward_rows() -> None:
    seen: list[tuple[int, int | None, str]] = []
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        inspector.cam(_batch(), api.CamOptions("score_cam", batch_size=5),
                      progress=lambda p: seen.append((p.done, p.total, p.unit)))
    # Score-CAM runs one masked forward row per (image, channel): 3 images x 8 channels
    assert seen[-1] == (24, 24, "row") and [s[0] for s in seen] == [5, 10, 15, 20, 24]


def test_non_classifier_score_explains_how_to_pick_one() -> None:
    """A feature extractor's output is no class score; score= picks a (N, classes) tensor."""
    model = graphs.conv_relu()
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # output y is (1, 1, 2, 2)
    with api.Inspector(model, "cpu") as inspector:
        with pytest.raises(InputError, match=r"not one score per class.*score="):
            inspector.cam(x, api.CamOptions("grad_cam", layer=0,
                                            goal=api.TargetSpec(kind="class")))
        # by default a 4-D output is a segmentation target (tests/test_target_run.py)
        assert inspector.cam(x, api.CamOptions("grad_cam", layer=0)).kind == "segmentation"
    net, cnn = _torch_net()
    with api.Inspector(cnn, "cpu") as inspector:
        # pick the logits explicitly: same maps as the default
        a = inspector.cam(_batch(), api.CamOptions("grad_cam", score="y"))
        b = inspector.cam(_batch(), api.CamOptions("grad_cam"))
        with pytest.raises(LayerNotFoundError):
            inspector.cam(_batch(), api.CamOptions("grad_cam", score="logitz"))
    np.testing.assert_array_equal(a.layer_cam, b.layer_cam)
    assert a.score_tensor == "y"


def test_label_target_through_the_api() -> None:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    with api.Inspector(MNIST, "cpu", labels=names) as inspector:
        report = inspector.cam([DIGIT], api.CamOptions("grad_cam", target="seven"))
        by_index = inspector.cam([DIGIT], api.CamOptions("grad_cam", target=7))
        typo = inspector.cam([DIGIT], api.CamOptions("grad_cam", target="sevn"))  # one match
        with pytest.raises(InputError, match="close matches.*(five|nine)"):
            inspector.cam([DIGIT], api.CamOptions("grad_cam", target="fine"))  # five or nine
    assert report.targets.tolist() == [7] == typo.targets.tolist()
    np.testing.assert_array_equal(report.layer_cam, by_index.layer_cam)
    assert api.cam_to_json(report)[0]["rank"] is None  # a given target has no rank


@pytest.mark.parametrize("method", ["score_cam", "ablation_cam", "occlusion", "eigen_cam"])
def test_explain_top_forward_methods_share_passes(method: str) -> None:
    """T targets per image reuse the same masked/ablated/occluded rows: same maps, 1/T rows."""
    x = _batch()
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        seen: list[int] = []
        top = inspector.cam(x, api.CamOptions(method, explain_top=3, batch_size=16),
                            progress=lambda p: seen.append(p.done))
        single = []
        for rank in range(3):
            targets = top.targets[rank::3]
            rows = [inspector.cam(x[i:i + 1], api.CamOptions(method, target=int(t)))
                    for i, t in enumerate(targets)]
            single.append(np.concatenate([r.layer_cam for r in rows]))
    for rank in range(3):
        np.testing.assert_allclose(top.layer_cam[rank::3], single[rank], rtol=1e-5, atol=1e-6)
    per_image = {"score_cam": 8, "ablation_cam": 9, "occlusion": None, "eigen_cam": 0}[method]
    if per_image is not None:  # 8 channels at r2; ablation adds the unablated row
        assert (seen[-1] if seen else 0) == 3 * per_image


def _host_masked(images: np.ndarray, index: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Score-CAM's masked inputs built on the host with the numpy reference upsampling."""
    from onnx_featviz.attribution import maps as cam_maps

    up = cam_maps.upsample_bilinear(maps, images.shape[2:]).astype(np.float64)
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    return (images[index] * ((up - lo) / (hi - lo + 1e-8))[:, None]).astype(np.float32)


@pytest.mark.parametrize("kind", ["nchw", "fp16", "nhwc"])
def test_mask_input_equals_host_masks(kind: str) -> None:
    base = {"nchw": graphs.small_cnn, "fp16": lambda: graphs.fp16_model(graphs.small_cnn()),
            "nhwc": graphs.nhwc_keras_style}[kind]()
    size = (8, 8) if kind == "nhwc" else (16, 16)
    rng = np.random.default_rng(3)
    images = rng.standard_normal((3, 3, *size)).astype(np.float32)
    index = np.array([0, 1, 1, 0, 2], np.int64)
    maps = rng.random((5, 3, 5)).astype(np.float32)
    before = base.SerializeToString()
    masked = masking.mask_input(base, map_size=(3, 5), input_size=size,
                                layout="NHWC" if kind == "nhwc" else "NCHW")
    assert base.SerializeToString() == before and masked.ir_version == base.ir_version
    onnx.checker.check_model(masked, full_check=True)
    out = base.graph.output[0].name
    got = ort.InferenceSession(masked.SerializeToString(), providers=["CPUExecutionProvider"]
                               ).run([out], {masking.MASK_IMAGES: images,
                                             masking.MASK_INDEX: index,
                                             masking.MASK_MAPS: maps})[0]
    x = _host_masked(images, index, maps)
    if kind == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    if kind == "fp16":
        x = x.astype(np.float16)
    want = ort.InferenceSession(base.SerializeToString(), providers=["CPUExecutionProvider"]
                                ).run([out], {base.graph.input[0].name: x})[0]
    tol = 1e-2 if kind == "fp16" else 1e-5
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=tol,
                               rtol=tol)


def test_score_cam_device_masks_equal_host_masks() -> None:
    from onnx_featviz.attribution import perturbation as cam_perturbation

    x = _batch()
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        report = inspector.cam(x, api.CamOptions("score_cam", batch_size=7))
        acts = inspector.capture(x, ["r2"])["r2"]
        host = cam_perturbation.score_cam(acts, x, targets=report.targets,
                              forward=attribution_run._forward_fn(inspector, "logits"),
                              batch_size=7)
        assert any(key[0] == "mask" for key in inspector._sessions)  # the device path ran
    np.testing.assert_allclose(report.layer_cam, host, rtol=1e-5, atol=1e-6)


def test_cam_without_overlays_gives_arrays_only() -> None:
    with api.Inspector(graphs.small_cnn(), "cpu") as inspector:
        full = inspector.cam(_batch(), api.CamOptions("grad_cam"))
        bare = inspector.cam(_batch(), api.CamOptions("grad_cam", overlays=False))
    assert bare.overlays == () and len(full.overlays) == 3
    np.testing.assert_array_equal(bare.cam, full.cam)
    names = [p.name for p in api.render_cam(bare).pictures]
    assert len(names) == 3 and all(n.endswith("_heatmap.png") for n in names)


def test_cli_occlusion_window_stride_fill_match_direct_runs(tmp_path: Path) -> None:
    """--window/--stride/--fill reach the occlusion grid: each cell equals the score drop of one
    blanked window, computed with onnxruntime on the untouched model."""
    npz = tmp_path / "occ.npz"
    result = CliRunner().invoke(main, ["cam", str(MNIST), str(DIGIT), "--method", "occlusion",
                                       "--window", "7", "--stride", "7x14", "--fill", "0.5",
                                       "--out", str(tmp_path / "out"), "--save-npz", str(npz),
                                       "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    with api.Inspector(MNIST, "cpu") as inspector:
        x = inspector.load_batch([DIGIT]).array
    session = ort.InferenceSession(str(MNIST), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0][0]
    target = int(logits.argmax())
    # rows start 0, 7, 14, 21; columns 0, 14 and 21 (the last window sits flush with the edge)
    expected = np.zeros((4, 3))
    for i, y0 in enumerate(range(0, 28, 7)):
        for j, x0 in enumerate((0, 14, 21)):
            blanked = x.copy()
            blanked[:, :, y0:y0 + 7, x0:x0 + 7] = 0.5
            drop = logits[target] - session.run(None, {"input": blanked})[0][0, target]
            expected[i, j] = max(drop, 0.0)
    data = np.load(npz)
    assert int(data["target"][0]) == target
    np.testing.assert_allclose(data["layer_cam"][0], expected, rtol=1e-4, atol=1e-4)


def test_cli_occlusion_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["cam", str(MNIST), str(DIGIT), "--method", "occlusion", "--out", str(tmp_path),
            "--provider", "cpu"]
    out = runner.invoke(main, [*base, "--fill", "grey"])
    assert out.exit_code == 2 and "not a fill value" in out.output
    out = runner.invoke(main, [*base, "--window", "0"])
    assert out.exit_code == 2 and "not a size" in out.output
    out = runner.invoke(main, [*base, "--window", "40"])
    assert out.exit_code == 1 and "larger than the input" in out.output
    assert "Traceback" not in out.output
