"""CAM and backprop runs with segmentation, detection, element and token targets vs torch.

Every model is plain torch (``tests/targets_models.py`` and the ViT / Swin-style blocks below),
exported with both exporters; gradients at the CAM layer and at the input are compared with torch
autograd of the same score written in torch, and the perturbation methods with torch runs of the
masked, ablated or occluded inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnx_featviz import api
from onnx_featviz.attribution import target_run
from onnx_featviz.errors import InputError

torch = pytest.importorskip("torch")
targets_models = pytest.importorskip("tests.targets_models")
F = torch.nn.functional

SIZE = 64
RTOL = 1e-5


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """<= 1e-5 relative to the largest magnitude (float32 sums of ~1e3 terms)."""
    scale = float(np.abs(want).max()) or 1e-2  # an all-zero CAM (ReLU) is compared absolutely
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module", params=[(k, d) for k in ("unet", "yolov8", "yolov5", "boxes")
                                        for d in (False, True)],
                ids=lambda p: f"{p[0]}-{'dynamo' if p[1] else 'torchscript'}")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    name, dynamo = request.param
    model, path = targets_models.build_and_export(name, tmp_path_factory.mktemp(name),
                                                  dynamo=dynamo)
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    return {"name": name, "model": model, "path": path, "x": x}


def _hooked(model: Any, name: str) -> tuple[Any, list[Any]]:
    """Register a hook keeping the CAM layer tensor (conv_layers[2]'s activation) with grad."""
    kept: list[Any] = []
    if name == "unet":  # relu(dec(.)) is the head's input
        def pre(_: Any, args: tuple[Any, ...]) -> None:
            args[0].retain_grad()
            kept.append(args[0])
        return model.head.register_forward_pre_hook(pre), kept

    def post(_: Any, __: Any, out: Any) -> None:
        out.retain_grad()
        kept.append(out)
    return model.stem.register_forward_hook(post), kept


def _torch_det_score(name: str, outs: Any, n: int, anchor: int, cls: int) -> Any:
    """The final class score of a detection, written from the models' docstrings."""
    if name == "yolov8":
        return outs[n, 4 + cls, anchor]
    if name == "yolov5":
        return outs[n, anchor, 4] * outs[n, anchor, 5 + cls]
    return outs[1][n, anchor, cls]


def _torch_seg_score(out: Any, n: int, k: int, region: np.ndarray) -> Any:
    return (out[n, k] * torch.from_numpy(region.astype(np.float32))).sum()


def _torch_rows(ex: dict[str, Any], report: api.CamReport, regions: list[np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Torch (activations, layer gradients, input gradients) per CAM row."""
    acts, grads, inputs = [], [], []
    for r, n in enumerate(report.image_index):
        x = torch.from_numpy(ex["x"][n:n + 1]).requires_grad_()
        handle, kept = _hooked(ex["model"], ex["name"])
        out = ex["model"](x)
        handle.remove()
        if ex["name"] == "unet":
            assert regions is not None
            score = _torch_seg_score(out, 0, int(report.targets[r]), regions[r])
        else:
            d = report.detections[r]
            score = _torch_det_score(ex["name"], out, 0, d.anchor, d.cls)
        score.backward()
        acts.append(kept[0].detach().numpy()[0])
        grads.append(kept[0].grad.numpy()[0])
        inputs.append(x.grad.numpy()[0])
    return np.stack(acts), np.stack(grads), np.stack(inputs)


def _minmax(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    return (maps - lo) / (maps.max(axis=(1, 2), keepdims=True) - lo)


def _paper_grad_cam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    w = g.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    return np.maximum((w * a).sum(axis=1), 0.0)


def _regions(ex: dict[str, Any], how: str) -> tuple[api.TargetSpec, list[np.ndarray]]:
    """A segmentation goal and the region each image's score sums over (numpy, by hand)."""
    with torch.no_grad():
        out = ex["model"](torch.from_numpy(ex["x"])).numpy()
    pred = out.argmax(1)
    if how == "mask":  # 16x16 mask, each cell covering 4x4 output pixels
        mask = np.random.default_rng(1).random((16, 16)) > 0.5
        return (api.TargetSpec(region=mask.astype(np.uint8) * 255),
                [np.kron(mask, np.ones((4, 4), bool))] * 2)
    if how == "box":  # x0, y0, x1, y1 = 8, 4, 40, 30: rows 4..29, columns 8..39
        region = np.zeros((SIZE, SIZE), bool)
        region[4:30, 8:40] = True
        return api.TargetSpec(box=(8.0, 4.0, 40.0, 30.0)), [region] * 2
    dominant = [int(np.bincount(p.ravel(), minlength=3).argmax()) for p in pred]
    return api.TargetSpec(), [pred[n] == dominant[n] for n in range(2)]


@pytest.mark.parametrize("how", ["argmax", "mask", "box"])
def test_segmentation_grad_cam_and_saliency_match_torch(exported: dict[str, Any],
                                                        how: str) -> None:
    if exported["name"] != "unet":
        pytest.skip("segmentation model only")
    goal, regions = _regions(exported, how)
    with api.Inspector(exported["path"], "cpu") as ins:
        layer = ins.info.conv_layers[2].name
        report = ins.cam(exported["x"], api.CamOptions(layer=layer, goal=goal))
        views = ins.backprop(exported["x"], "saliency", goal=goal)
    assert report.kind == "segmentation" and report.cam.shape == (2, SIZE, SIZE)
    acts, grads, inputs = _torch_rows(exported, report, regions)
    _close(report.layer_cam, _paper_grad_cam(acts, grads))
    np.testing.assert_allclose(views, _minmax(np.abs(inputs).max(axis=1)), atol=1e-5)


def test_segmentation_default_class_is_the_dominant_one(exported: dict[str, Any]) -> None:
    if exported["name"] != "unet":
        pytest.skip("segmentation model only")
    with torch.no_grad():
        pred = exported["model"](torch.from_numpy(exported["x"])).numpy().argmax(1)
    with api.Inspector(exported["path"], "cpu") as ins:
        report = ins.cam(exported["x"], api.CamOptions(goal=api.TargetSpec()))
        given = ins.cam(exported["x"], api.CamOptions(target=1, goal=api.TargetSpec()))
    np.testing.assert_array_equal(report.targets,
                                  [np.bincount(p.ravel(), minlength=3).argmax() for p in pred])
    np.testing.assert_array_equal(given.targets, [1, 1])
    np.testing.assert_array_equal(given.rank, [-1, -1])


def test_detection_rows_in_one_call_match_torch(exported: dict[str, Any]) -> None:
    """Top-3 detections of each image: 6 seed rows, each row's gradients equal torch's."""
    if exported["name"] == "unet":
        pytest.skip("detectors only")
    with api.Inspector(exported["path"], "cpu") as ins:
        layer = ins.info.conv_layers[2].name
        report = ins.cam(exported["x"], api.CamOptions(layer=layer,
                                                       goal=api.TargetSpec(detections=3)))
        calls = _count_runs(ins)
        ins.cam(exported["x"], api.CamOptions(layer=layer, goal=api.TargetSpec(detections=3)))
        calls = list(calls)
        found, _ = target_run.resolve(ins, exported["x"], api.CamOptions(
            goal=api.TargetSpec(detections=3)))
        layer_grads, _ = target_run.layer_gradients(ins, exported["x"], found,
                                                    [report.layer], {})
    assert report.kind == "detection"
    np.testing.assert_array_equal(report.image_index, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(report.rank, [0, 1, 2, 0, 1, 2])
    assert calls == [2, 6], "one forward pass of 2 images, one gradient call of 6 rows"
    scores = [d.score for d in report.detections]
    assert scores[:3] == sorted(scores[:3], reverse=True)
    d = report.detections[1]  # each overlay's title names its detection, class and score
    assert report.titles[1] == (f"detection 2: class {d.cls} (score {d.score:.2f})\n"
                                f"grad_cam at {report.layer}")
    acts, grads, _ = _torch_rows(exported, report, None)
    _close(layer_grads[0], grads)
    _close(report.layer_cam, _paper_grad_cam(acts, grads))
    assert len(report.overlays) == 6


def _count_runs(ins: api.Inspector) -> list[int]:
    """Patch every open session to count its runs; returns the live counter list."""
    counts: list[int] = []
    for session in [s for s in ins._sessions.values() if hasattr(s, "_run_once")]:
        original = session._run_once

        def counted(feeds: Any, names: Any, _orig: Any = original) -> Any:
            counts.append(len(next(iter(feeds.values()))))
            return _orig(feeds, names)
        session._run_once = counted
    counts.clear()
    return counts


@pytest.mark.parametrize("pick", ["index", "class", "box"])
def test_detection_picked_by_index_class_or_box(exported: dict[str, Any], pick: str) -> None:
    if exported["name"] == "unet":
        pytest.skip("detectors only")
    x = exported["x"]
    with api.Inspector(exported["path"], "cpu") as ins:
        best = ins.cam(x, api.CamOptions(goal=api.TargetSpec(detections=3)))
        second = best.detections[1]
        options = {"index": api.CamOptions(goal=api.TargetSpec(detection=1)),
                   "class": api.CamOptions(target=second.cls, goal=api.TargetSpec()),
                   "box": api.CamOptions(goal=api.TargetSpec(box=second.box))}[pick]
        report = ins.cam(x[:1], options)
        views = ins.backprop(x[:1], "saliency", options.target, goal=options.goal)
    chosen = report.detections[0]
    if pick == "class":
        assert chosen.cls == second.cls and chosen.score >= second.score
    else:
        assert (chosen.anchor, chosen.cls) == (second.anchor, second.cls)
    _, _, inputs = _torch_rows(exported, report, None)
    np.testing.assert_allclose(views, _minmax(np.abs(inputs).max(axis=1)), atol=1e-5)


def test_element_targets_match_torch(exported: dict[str, Any]) -> None:
    """--score TENSOR --target all / INDEX: the sum of the tensor, or one element."""
    if exported["name"] != "unet":
        pytest.skip("one model is enough")
    x = torch.from_numpy(exported["x"]).requires_grad_()
    exported["model"](x).sum().backward()
    want_all = x.grad.numpy().copy()
    x.grad = None
    exported["model"](x)[:, 2, 5, 7].sum().backward()
    want_one = x.grad.numpy()
    with api.Inspector(exported["path"], "cpu") as ins:
        found, _ = target_run.resolve(ins, exported["x"], api.CamOptions(
            goal=api.TargetSpec(element="all")))
        grads, _ = target_run.layer_gradients(ins, exported["x"], found, ["input"], {})
        one, _ = target_run.resolve(ins, exported["x"], api.CamOptions(
            target="2,5,7", goal=api.TargetSpec(kind="element")))
        grads_one, _ = target_run.layer_gradients(ins, exported["x"], one, ["input"], {})
    _close(grads[0], want_all)
    _close(grads_one[0], want_one)
    np.testing.assert_array_equal(one.targets, [2 * 64 * 64 + 5 * 64 + 7] * 2)


# ------------------------------------------------------------------- perturbation methods


def _torch_scores(ex: dict[str, Any], report: api.CamReport, batch: np.ndarray,
                  rows: np.ndarray, regions: list[np.ndarray] | None) -> np.ndarray:
    """Score of CAM row ``rows[b]`` on input ``batch[b]``, computed in torch."""
    with torch.no_grad():
        out = ex["model"](torch.from_numpy(batch.astype(np.float32)))
    got = []
    for b, r in enumerate(rows):
        if regions is not None:
            got.append(float(_torch_seg_score(out, b, int(report.targets[r]), regions[r])))
        else:
            d = report.detections[r]
            got.append(float(_torch_det_score(ex["name"], out, b, d.anchor, d.cls)))
    return np.asarray(got)


def _goal(ex: dict[str, Any]) -> tuple[api.TargetSpec, list[np.ndarray] | None]:
    if ex["name"] == "unet":
        goal, regions = _regions(ex, "box")
        return goal, regions
    return api.TargetSpec(detections=2), None


def test_occlusion_equals_torch_runs_of_occluded_inputs(exported: dict[str, Any]) -> None:
    goal, regions = _goal(exported)
    x = exported["x"]
    opts = api.OcclusionOptions(window=(32, 32), stride=(32, 32), baseline=0.0)
    with api.Inspector(exported["path"], "cpu") as ins:
        report = ins.cam(x, api.CamOptions("occlusion", goal=goal, occlusion=opts))
    rows = np.arange(len(report.image_index))
    base = _torch_scores(exported, report, x[report.image_index], rows, regions)
    want = np.zeros((len(rows), 2, 2))
    for i in range(2):
        for j in range(2):
            occluded = x[report.image_index].copy()
            occluded[:, :, 32 * i:32 * i + 32, 32 * j:32 * j + 32] = 0.0
            want[:, i, j] = base - _torch_scores(exported, report, occluded, rows, regions)
    _close(report.layer_cam, np.maximum(want, 0.0))


def test_ablation_cam_equals_torch_channel_zeroing(exported: dict[str, Any]) -> None:
    goal, regions = _goal(exported)
    with api.Inspector(exported["path"], "cpu") as ins:
        layer = ins.info.conv_layers[2].name
        report = ins.cam(exported["x"], api.CamOptions("ablation_cam", layer=layer, goal=goal))
    acts, _, _ = _torch_rows(exported, report, regions)
    want = []
    for r, n in enumerate(report.image_index):
        x = torch.from_numpy(exported["x"][n:n + 1])
        ys = []
        for k in range(acts.shape[1] + 1):
            handle = _zeroing(exported, k)
            with torch.no_grad():
                out = exported["model"](x)
            handle.remove()
            if regions is not None:
                ys.append(float(_torch_seg_score(out, 0, int(report.targets[r]), regions[r])))
            else:
                d = report.detections[r]
                ys.append(float(_torch_det_score(exported["name"], out, 0, d.anchor, d.cls)))
        y = np.asarray(ys)
        w = (y[0] - y[1:]) / y[0]
        want.append(np.maximum(np.einsum("k,khw->hw", w, acts[r].astype(np.float64)), 0.0))
    # w_k divides a difference of two float32 scores: 1e-4 of the largest value
    np.testing.assert_allclose(report.layer_cam, np.stack(want), rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())


def _zeroing(ex: dict[str, Any], k: int) -> Any:
    """Hook zeroing channel k - 1 of the CAM layer (k = 0: nothing)."""
    def zero(t: Any) -> Any:
        if k:
            t = t.clone()
            t[:, k - 1] = 0.0
        return t
    if ex["name"] == "unet":
        return ex["model"].head.register_forward_pre_hook(lambda _, a: (zero(a[0]),))
    return ex["model"].stem.register_forward_hook(lambda _, __, out: zero(out))


def test_score_cam_equals_torch_runs_of_masked_inputs(exported: dict[str, Any]) -> None:
    goal, regions = _goal(exported)
    x = exported["x"]
    with api.Inspector(exported["path"], "cpu") as ins:
        layer = ins.info.conv_layers[2].name
        report = ins.cam(x, api.CamOptions("score_cam", layer=layer, goal=goal, batch_size=64))
    acts, _, _ = _torch_rows(exported, report, regions)
    want = []
    for r, n in enumerate(report.image_index):
        up = F.interpolate(torch.from_numpy(acts[r][None]), size=(SIZE, SIZE),
                           mode="bilinear", align_corners=False)[0].numpy()
        lo = up.min(axis=(1, 2), keepdims=True)
        hi = up.max(axis=(1, 2), keepdims=True)
        masks = (up - lo) / (hi - lo + 1e-8)
        masked = x[n][None] * masks[:, None]
        s = _torch_scores(exported, report, masked, np.full(len(masked), r), regions)
        w = np.exp(s - s.max())
        w /= w.sum()
        want.append(np.maximum(np.einsum("k,khw->hw", w, acts[r].astype(np.float64)), 0.0))
    np.testing.assert_allclose(report.layer_cam, np.stack(want), rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())


def test_eigen_cam_needs_no_classifier(exported: dict[str, Any]) -> None:
    with api.Inspector(exported["path"], "cpu") as ins:
        report = ins.cam(exported["x"], api.CamOptions("eigen_cam"))
    assert report.kind == "none" and report.cam.shape == (2, SIZE, SIZE)
    assert np.isfinite(report.cam).all() and report.cam.max() == pytest.approx(1.0)


def test_several_layers_give_one_map_each_and_the_fused_map(exported: dict[str, Any]) -> None:
    goal, _ = _goal(exported)
    with api.Inspector(exported["path"], "cpu") as ins:
        names = [ins.info.conv_layers[i].name for i in (1, 2)]
        report = ins.cam(exported["x"], api.CamOptions("layer_cam", layers=tuple(names),
                                                       goal=goal))
        single = [ins.cam(exported["x"], api.CamOptions("layer_cam", layer=n, goal=goal)).cam
                  for n in names]
    assert len(report.layers) == 2 and len(report.layer_heatmaps) == 2
    for got, want in zip(report.layer_heatmaps, single, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(report.cam, _minmax((single[0] + single[1]) / 2), atol=1e-5)


# ---------------------------------------------------------------------- token layers


class TinyViT(torch.nn.Module):  # type: ignore[misc]
    """(N, 3, 16, 16) -> 4x4 patches of 4 px -> [cls] + 16 tokens (C=8) -> one block -> (N, 5).

    t = t + MLP(LN(t)) is the CAM layer; then t = t + attn(LN(t)) (single-head, plain
    matmuls) mixes the patch tokens into the class token the head reads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.ln1, self.ln2 = torch.nn.LayerNorm(8), torch.nn.LayerNorm(8)
        self.qkv, self.mlp = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
        self.block = torch.nn.Identity()  # the CAM layer: the block's output tokens
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: Any) -> Any:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        t = self.block(t + torch.relu(self.mlp(self.ln2(t))))
        q, k, v = self.qkv(self.ln1(t)).chunk(3, -1)
        t = t + torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, -1) @ v
        return self.head(t[:, 0])


class TinySwin(torch.nn.Module):  # type: ignore[misc]
    """(N, 3, 16, 16) -> patches -> channels-last (N, 4, 4, 8) block -> mean -> (N, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.ln, self.mlp = torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)
        self.block = torch.nn.Identity()
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: Any) -> Any:
        t = self.patch(x).permute(0, 2, 3, 1)
        t = self.block(t + torch.relu(self.mlp(self.ln(t))))
        return self.head(t.mean((1, 2)))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_token_layers_are_reshaped_and_match_torch(kind: str, dynamo: bool,
                                                   tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = (TinyViT() if kind == "vit" else TinySwin()).eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "m.onnx"
    example = torch.zeros(2, 3, 16, 16)
    if dynamo:
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["input"])
    else:
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                          opset_version=17)
    kept: list[Any] = []

    def keep(_: Any, __: Any, out: Any) -> None:
        out.retain_grad()
        kept.append(out)
    handle = model.block.register_forward_hook(keep)
    xt = torch.from_numpy(x)
    logits = model(xt)
    logits[np.arange(2), logits.argmax(1)].sum().backward()
    handle.remove()
    a, g = kept[0].detach().numpy(), kept[0].grad.numpy()
    with api.Inspector(path, "cpu") as ins:
        layer = _block_output(ins, x, a)
        report = ins.cam(x, api.CamOptions(layer=layer))
    if kind == "vit":
        a, g = a[:, 1:], g[:, 1:]
    a = a.reshape(2, 4, 4, 8).transpose(0, 3, 1, 2)
    g = g.reshape(2, 4, 4, 8).transpose(0, 3, 1, 2)
    transform = report.transforms[0]
    assert transform.kind == ("tokens" if kind == "vit" else "channels_last")
    assert transform.grid == (4, 4) and transform.prefix_tokens == (kind == "vit")
    np.testing.assert_array_equal(report.targets, logits.argmax(1).numpy())
    _close(report.layer_cam, _paper_grad_cam(a, g))


def _block_output(ins: api.Inspector, x: np.ndarray, want: np.ndarray) -> str:
    """The tensor holding torch's ``block`` output, found by value among Add outputs."""
    adds = [lay.output for lay in ins.info.layers if lay.op_type == "Add"]
    values = ins.capture(x, adds)
    found = [t for t in adds if values[t].shape == want.shape
             and np.allclose(values[t], want, atol=1e-5)]
    assert found, "no Add output equals the block output"
    return found[-1]


def test_backprop_with_several_rows_per_image_is_refused(exported: dict[str, Any]) -> None:
    if exported["name"] == "unet":
        pytest.skip("detectors only")
    with api.Inspector(exported["path"], "cpu") as ins, pytest.raises(InputError,
                                                                      match="one target per"):
        ins.backprop(exported["x"], "saliency", goal=api.TargetSpec(detections=2))


# ---------------------------------------------------------------------------------- CLI


def _picture(tmp_path: Path, x: np.ndarray) -> Path:
    """Save image 0 as an 8-bit PNG; returns the path and the batch the CLI will feed."""
    from PIL import Image

    pixels = np.clip(x[0].transpose(1, 2, 0) * 40 + 128, 0, 255).astype(np.uint8)
    path = tmp_path / "street.png"
    Image.fromarray(pixels).save(path)
    return path


def test_cli_detection_overlay_json_and_npz(exported: dict[str, Any], tmp_path: Path) -> None:
    if exported["name"] != "yolov8":
        pytest.skip("one detector is enough")
    import json

    from click.testing import CliRunner

    from onnx_featviz.cli.commands import main

    image = _picture(tmp_path, exported["x"])
    npz = tmp_path / "cam.npz"
    result = CliRunner().invoke(main, [
        "cam", str(exported["path"]), str(image), "--detections", "3", "--json", "--preset",
        "unit", "--out", str(tmp_path / "out"), "--save-npz", str(npz), "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("{"):])["images"]
    assert [r["kind"] for r in rows] == ["detection"] * 3 and [r["rank"] for r in rows] == [1, 2, 3]
    with api.Inspector(exported["path"], "cpu", prep=api.PrepOptions(preset="unit")) as ins:
        report = ins.cam([image], api.CamOptions(goal=api.TargetSpec(detections=3)))
    for row, found in zip(rows, report.detections, strict=True):
        assert row["detection"]["box"] == pytest.approx(list(found.box))
        assert row["detection"]["class"] == found.cls
    data = np.load(npz)
    np.testing.assert_allclose(data["box"], [d.box for d in report.detections], rtol=1e-6)
    from onnx_featviz.attribution.boxes import PALETTE
    top = report.detections[0]
    assert (tmp_path / "out" / "street" / f"cam_grad_cam_top1_class{top.cls}.png").is_file()
    overlay = np.asarray(report.overlays[0])  # the saved PNG adds a title band and colour bar
    x0 = max(round(top.box[0]), 0)
    y1 = min(round(top.box[3]) - 1, SIZE - 1)
    assert tuple(overlay[y1, x0 + 3]) == PALETTE[top.cls], "box edge in the class colour"


def test_cli_segmentation_region_box_and_element(exported: dict[str, Any],
                                                 tmp_path: Path) -> None:
    if exported["name"] != "unet":
        pytest.skip("segmentation model only")
    from click.testing import CliRunner
    from PIL import Image

    from onnx_featviz.cli.commands import main

    image = _picture(tmp_path, exported["x"])
    mask = tmp_path / "mask.png"
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8))).save(
        mask)
    base = ["--preset", "unit", "--provider", "cpu", "--target", "2"]
    runner = CliRunner()
    for extra in (["--region", str(mask)], ["--box", "8,4,40,30"]):
        npz = tmp_path / "seg.npz"
        out = runner.invoke(main, ["cam", str(exported["path"]), str(image), *base, *extra,
                                   "--out", str(tmp_path / "o"), "--save-npz", str(npz)])
        assert out.exit_code == 0, out.output
        goal = (api.TargetSpec(region=np.asarray(Image.open(mask))) if extra[0] == "--region"
                else api.TargetSpec(box=(8.0, 4.0, 40.0, 30.0)))
        with api.Inspector(exported["path"], "cpu", prep=api.PrepOptions(preset="unit")) as ins:
            want = ins.cam([image], api.CamOptions(target=2, goal=goal))
        np.testing.assert_allclose(np.load(npz)["layer_cam"], want.layer_cam, rtol=1e-6)
    bad = runner.invoke(main, ["cam", str(exported["path"]), str(image), "--box", "40,4,8,30"])
    assert bad.exit_code == 2 and "x0 < x1" in bad.output
    with api.Inspector(exported["path"], "cpu") as ins:
        output = ins.info.outputs[0].name
    out = runner.invoke(main, ["backprop", str(exported["path"]), str(image), "--preset", "unit",
                               "--provider", "cpu", "--score", output, "--target", "all",
                               "--out", str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "b" / "street" / "backprop_saliency.png").is_file()


class TwoInputs(torch.nn.Module):  # type: ignore[misc]
    """logits = fc(mean(relu(conv(x)))) * gain: the gain is a second model input (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: Any, gain: Any) -> Any:
        a = self.act(self.conv(x))
        return self.fc(a.mean((2, 3))) * gain


def test_extra_inputs_from_npz_match_torch(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from onnx_featviz.cli.commands import main

    torch.manual_seed(0)
    model = TwoInputs().eval()
    path = tmp_path / "two.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8), torch.ones(1, 4)), str(path),
                      dynamo=False, input_names=["input", "gain"], opset_version=17)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    gain = rng.uniform(0.5, 2.0, size=(1, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "extra.npz", gain=gain)
    kept: list[Any] = []

    def keep(_: Any, __: Any, out: Any) -> None:
        out.retain_grad()
        kept.append(out)
    handle = model.act.register_forward_hook(keep)
    logits = model(torch.from_numpy(x), torch.from_numpy(gain))
    handle.remove()
    logits[0, 1].backward()
    want = _paper_grad_cam(kept[0].detach().numpy(), kept[0].grad.numpy())
    npz = tmp_path / "cam.npz"
    out = CliRunner().invoke(main, ["cam", str(path), str(tmp_path / "x.npy"), "--inputs",
                                    str(tmp_path / "extra.npz"), "--target", "1",
                                    "--provider", "cpu", "--save-npz", str(npz),
                                    "--out", str(tmp_path / "o")])
    assert out.exit_code == 0, out.output
    _close(np.load(npz)["layer_cam"], want)


def test_score_cam_runs_constant_channels_once_with_the_same_result() -> None:
    """Channels with a constant map mask the input to zeros: one shared row, same maps."""
    from onnx_featviz.attribution.perturbation import score_cam

    rng = np.random.default_rng(0)
    acts = rng.random((2, 6, 4, 4)).astype(np.float32)
    acts[0, [1, 4]] = 0.0  # dead channels
    acts[1, 2] = 3.0  # a constant, nonzero map: its min-max mask is 0 too
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    weights = rng.normal(size=(3 * 8 * 8, 5))
    rows: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        rows.append(len(batch))
        return batch.reshape(len(batch), -1).astype(np.float64) @ weights

    got = score_cam(acts, x, targets=np.array([1, 3]), forward=forward, batch_size=100)
    assert rows == [12 - 3, 1], "9 live rows in one call, then one all-zero row"
    want = []  # the definition, every (image, channel) row run
    for n, target in enumerate((1, 3)):
        up = F.interpolate(torch.from_numpy(acts[n][None]), size=(8, 8), mode="bilinear",
                           align_corners=False)[0].numpy()
        lo = up.min(axis=(1, 2), keepdims=True)
        masks = (up - lo) / (up.max(axis=(1, 2), keepdims=True) - lo + 1e-8)
        s = ((x[n][None] * masks[:, None]).reshape(6, -1).astype(np.float64) @ weights)[:, target]
        w = np.exp(s - s.max())
        want.append(np.maximum(np.einsum("k,khw->hw", w / w.sum(), acts[n]), 0.0))
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-7)
