"""Tests for onnx_featviz.io.preprocess: input spec, recipes, image -> array, user arrays."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.io import external as model_files
from onnx_featviz.io import files as fileio
from onnx_featviz.io import preprocess as preprocess
from onnx_featviz.structs import META_PREPROCESS, InputSpec, Preprocessing
from tests.conftest import shared_path

# 2x3 RGB image with hand-checkable pixels: (row, col) -> (R, G, B)
PIXELS = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                   [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)


def _image() -> Image.Image:
    return Image.fromarray(PIXELS)


def _identity_model(shape: list[int | str | None], elem: int = TensorProto.FLOAT,
                    meta: str | None = None) -> onnx.ModelProto:
    """x(shape) -> Identity -> y; optional featviz.preprocess metadata; a weight initializer
    is also listed as the first graph input (old exporters did that)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    if meta is not None:
        model.metadata_props.add(key=META_PREPROCESS, value=meta)
    onnx.checker.check_model(model)
    return model


def _spec(layout: str = "NCHW", channels: int = 3, height: int | None = None,
          width: int | None = None, dtype: str = "float32") -> InputSpec:
    dims = {"N": None, "C": channels, "H": height, "W": width}
    return InputSpec("x", dtype, layout, channels, height, width, None,
                     tuple(dims[a] for a in layout))


# -- input spec -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "layout", "channels", "height", "width"),
    [
        ([1, 3, 224, 224], "NCHW", 3, 224, 224),
        ([1, 224, 224, 3], "NHWC", 3, 224, 224),
        (["N", 1, 28, 28], "NCHW", 1, 28, 28),
        (["N", "H", "W", 3], "NHWC", 3, None, None),
        (["N", 3, "H", "W"], "NCHW", 3, None, None),
        (["N", "C", "H", "W"], "NCHW", 3, None, None),
        ([1, 4, 4, 4], "NCHW", 4, 4, 4),
        ([1, 12, 8, 8], "NCHW", 12, 8, 8),
        (["N", 28, 28], "NHW", 1, 28, 28),
        ([None, 784], "other", 0, None, None),
    ],
)
def test_infer_input_spec_layouts(shape: list[int | str | None], layout: str, channels: int,
                                  height: int | None, width: int | None) -> None:
    spec = preprocess.infer_input_spec(_identity_model(shape))
    assert (spec.name, spec.dtype, spec.layout) == ("x", "float32", layout)
    assert (spec.channels, spec.height, spec.width) == (channels, height, width)
    assert spec.shape == tuple(shape)
    assert spec.batch == (shape[0] if isinstance(shape[0], int) else None)


@pytest.mark.parametrize(("elem", "dtype"), [(TensorProto.FLOAT16, "float16"),
                                             (TensorProto.UINT8, "uint8"),
                                             (TensorProto.INT8, "int8")])
def test_infer_input_spec_dtypes(elem: int, dtype: str) -> None:
    assert preprocess.infer_input_spec(_identity_model([1, 3, 8, 8], elem)).dtype == dtype


def test_infer_input_spec_metadata_layout_and_errors() -> None:
    model = _identity_model([1, 8, 8, 8], meta=json.dumps({"layout": "NHWC"}))
    assert preprocess.infer_input_spec(model).layout == "NHWC"
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
        "c", TensorProto.FLOAT, [1], [1.0]))], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ModelError, match="has no graph input"):
        preprocess.infer_input_spec(helper.make_model(graph, ir_version=8))


# -- recipes --------------------------------------------------------------------------------
def test_presets() -> None:
    p = preprocess.PRESETS
    assert p["imagenet"].mean == (0.485, 0.456, 0.406) and p["imagenet"].crop_fraction == 0.875
    assert (p["caffe"].channel_order, p["caffe"].scale, p["caffe"].mean) == (
        "BGR", 1.0, (104.0, 117.0, 123.0))
    assert (p["unit"].scale, p["raw"].scale, p["tf"].scale) == (1 / 255, 1.0, 1 / 127.5)
    assert (p["mnist"].channel_order, p["mnist"].resize) == ("GRAY", "stretch")
    assert all(name == prep.preset for name, prep in p.items())


def test_read_preprocessing() -> None:
    assert preprocess.read_preprocessing(_identity_model([1, 3, 8, 8])) is None
    meta = {"preset": "caffe", "channel_order": "rgb", "size": [16, 12], "std": 2,
            "resize": "letterbox", "unknown": 1}
    prep = preprocess.read_preprocessing(_identity_model([1, 3, 8, 8], meta=json.dumps(meta)))
    assert prep == dataclasses.replace(preprocess.PRESETS["caffe"], channel_order="RGB",
                                       size=(16, 12), std=(2.0,), resize="letterbox")


@pytest.mark.parametrize(("meta", "match"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must be a JSON object, got list"),
    ('{"preset": "vgg"}', "names preset 'vgg'; valid presets: imagenet"),
    ('{"std": [1, 0]}', "std must not contain 0"),
    ('{"resize": "zoom"}', "resize must be one of crop, stretch, letterbox"),
    ('{"size": [0, 3]}', "size must be"),
])
def test_read_preprocessing_bad_metadata(meta: str, match: str) -> None:
    with pytest.raises(ModelError, match=match) as info:
        preprocess.read_preprocessing(_identity_model([1, 3, 8, 8], meta=meta))
    assert META_PREPROCESS in str(info.value) and "fix or remove" in str(info.value)


def test_resolve_preprocessing_precedence() -> None:
    spec = _spec()
    base = Preprocessing(scale=1.0, mean=(5.0,), size=(20, 30), preset="metadata")
    assert preprocess.resolve_preprocessing(spec) == preprocess.PRESETS["unit"]
    assert preprocess.resolve_preprocessing(_spec(channels=1)) == preprocess.PRESETS["mnist"]
    assert preprocess.resolve_preprocessing(spec, base=base) == base
    from_preset = preprocess.resolve_preprocessing(spec, preset="ImageNet", base=base)
    assert from_preset == dataclasses.replace(preprocess.PRESETS["imagenet"], size=(20, 30))
    explicit = preprocess.resolve_preprocessing(
        spec, preset="caffe", base=base, mean=(1, 2, 3), std=4, scale=0.5,
        channel_order="gray", size=8, resize="stretch")
    assert explicit == Preprocessing(scale=0.5, mean=(1.0, 2.0, 3.0), std=(4.0,),
                                     channel_order="GRAY", resize="stretch", size=(8, 8),
                                     crop_fraction=0.875, preset="caffe")
    fixed = preprocess.resolve_preprocessing(_spec(height=32, width=32), base=base)
    assert fixed.size == (32, 32)


def test_resolve_preprocessing_errors() -> None:
    with pytest.raises(InputError, match="unknown preprocessing preset 'imagnet'; did you mean "
                                         "imagenet"):
        preprocess.resolve_preprocessing(_spec(), preset="imagnet")
    with pytest.raises(InputError, match="mean has 3 values .* 1 channels; give 1 or 1"):
        preprocess.resolve_preprocessing(_spec(channels=1), preset="imagenet")
    with pytest.raises(InputError, match=r"size \(10, 10\) does not fit .* fixed at \(8, 8\)"):
        preprocess.resolve_preprocessing(_spec(height=8, width=8), size=10)
    with pytest.raises(InputError, match="channel_order must be one of RGB, BGR, GRAY"):
        preprocess.resolve_preprocessing(_spec(), channel_order="RGBX")
    with pytest.raises(InputError, match="scale must be in"):
        preprocess.resolve_preprocessing(_spec(), scale=-1.0)


# -- image_to_array: exact values -----------------------------------------------------------
@pytest.mark.parametrize("name", ["imagenet", "caffe", "unit", "raw", "tf"])
def test_image_to_array_presets_exact(name: str) -> None:
    prep = dataclasses.replace(preprocess.PRESETS[name], crop_fraction=1.0)
    pixels = PIXELS.astype(np.float32)
    if prep.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(prep.mean, np.float32)
    std = np.asarray(prep.std, np.float32)
    expected = ((pixels * np.float32(prep.scale) - mean) / std).transpose(2, 0, 1)
    out = preprocess.image_to_array(_image(), _spec(), prep)  # dynamic size: no resize
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_image_to_array_hand_values() -> None:
    unit = preprocess.image_to_array(_image(), _spec(), preprocess.PRESETS["unit"])
    np.testing.assert_array_equal(unit[:, 0, 0], [1.0, 0.0, 0.0])
    caffe = preprocess.image_to_array(_image(), _spec(), preprocess.PRESETS["caffe"])
    np.testing.assert_array_equal(caffe[:, 1, 0], [30 - 104, 20 - 117, 10 - 123])  # B, G, R
    tf = preprocess.image_to_array(_image(), _spec(), preprocess.PRESETS["tf"])
    np.testing.assert_allclose(tf[:, 0, 1], [-1.0, 1.0, -1.0], atol=1e-6)
    nhwc = preprocess.image_to_array(_image(), _spec("NHWC"), preprocess.PRESETS["raw"])
    np.testing.assert_array_equal(nhwc, PIXELS.astype(np.float32))


def test_image_to_array_gray_model_and_gray_order() -> None:
    gray = preprocess.image_to_array(_image(), _spec(channels=1), preprocess.PRESETS["raw"])
    # Pillow's ITU-R 601 luma: L = (299 R + 587 G + 114 B) / 1000, rounded
    assert gray.shape == (1, 2, 3)
    np.testing.assert_array_equal(gray[0, 0], [76, 150, 29])
    nhw = preprocess.image_to_array(_image(), _spec("NHW", channels=1), preprocess.PRESETS["raw"])
    assert nhw.shape == (2, 3)
    prep = dataclasses.replace(preprocess.PRESETS["raw"], channel_order="GRAY")
    replicated = preprocess.image_to_array(_image(), _spec(), prep)
    np.testing.assert_array_equal(replicated, np.repeat(gray, 3, axis=0))


def test_image_to_array_integer_and_half_inputs() -> None:
    raw = preprocess.image_to_array(_image(), _spec(dtype="uint8"), preprocess.PRESETS["imagenet"])
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, PIXELS.transpose(2, 0, 1))
    signed = preprocess.image_to_array(_image(), _spec(dtype="int8"), preprocess.PRESETS["unit"])
    assert signed.dtype == np.int8
    np.testing.assert_array_equal(signed, PIXELS.transpose(2, 0, 1).astype(np.int16) - 128)
    half = preprocess.image_to_array(_image(), _spec(dtype="float16"), preprocess.PRESETS["unit"])
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, PIXELS.transpose(2, 0, 1) / 255, atol=1e-3)


def test_image_to_array_alpha_palette_and_16_bit() -> None:
    rgba = np.concatenate([PIXELS, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    image = Image.fromarray(rgba)
    raw = preprocess.PRESETS["raw"]
    dropped = preprocess.image_to_array(image, _spec(), raw)
    np.testing.assert_array_equal(dropped, PIXELS.transpose(2, 0, 1))
    kept = preprocess.image_to_array(image, _spec(channels=4), raw)
    np.testing.assert_array_equal(kept, rgba.transpose(2, 0, 1))
    bgra = preprocess.image_to_array(image, _spec(channels=4),
                                     dataclasses.replace(raw, channel_order="BGR"))
    np.testing.assert_array_equal(bgra, rgba[:, :, [2, 1, 0, 3]].transpose(2, 0, 1))
    with pytest.raises(InputError, match=r"wants 4 channels but the image \(mode RGB.*no alpha"):
        preprocess.image_to_array(_image(), _spec(channels=4), raw)
    with pytest.raises(InputError, match="wants 2 channels"):
        preprocess.image_to_array(_image(), _spec(channels=2), raw)
    palette = _image().convert("P", palette=Image.Palette.ADAPTIVE, colors=6)
    np.testing.assert_array_equal(preprocess.image_to_array(palette, _spec(), raw),
                                  PIXELS.transpose(2, 0, 1))
    deep = Image.fromarray(np.array([[0, 257, 65535], [514, 32896, 1]], np.uint16))
    assert deep.mode == "I;16"
    values = preprocess.image_to_array(deep, _spec(), raw)
    expected = np.array([[0, 1, 255], [2, 128, 1 / 257]], np.float32)
    np.testing.assert_allclose(values, np.stack([expected] * 3), rtol=1e-6, atol=1e-6)


def test_image_to_array_does_not_modify_the_image() -> None:
    image = _image()
    before = (image.mode, image.size, image.tobytes())
    preprocess.image_to_array(image, _spec(height=4, width=4), preprocess.PRESETS["imagenet"])
    preprocess.display_image(image, _spec(height=4, width=4), preprocess.PRESETS["imagenet"])
    assert (image.mode, image.size, image.tobytes()) == before


# -- geometry -------------------------------------------------------------------------------
def _columns(width: int, height: int) -> Image.Image:
    """Gray image whose column ``x`` has value ``10 * (x + 1)``."""
    row = np.arange(1, width + 1, dtype=np.uint8) * 10
    return Image.fromarray(np.tile(row, (height, 1)))


def test_crop_is_a_center_crop_of_the_short_side() -> None:
    prep = dataclasses.replace(preprocess.PRESETS["raw"], channel_order="GRAY")
    out = preprocess.image_to_array(_columns(4, 2), _spec(channels=1, height=2, width=2), prep)
    np.testing.assert_array_equal(out[0], [[20, 30], [20, 30]])  # columns 1..2 of 0..3
    out = preprocess.image_to_array(_columns(5, 2), _spec(channels=1, height=2, width=2), prep)
    np.testing.assert_array_equal(out[0], [[20, 30], [20, 30]])  # left offset (5 - 2) // 2 = 1


def test_crop_fraction_resizes_then_crops() -> None:
    image = _columns(8, 8)
    prep = dataclasses.replace(preprocess.PRESETS["raw"], channel_order="GRAY",
                               crop_fraction=0.5)
    out = preprocess.image_to_array(image, _spec(channels=1, height=4, width=4), prep)
    np.testing.assert_array_equal(out[0], np.asarray(image, np.float32)[2:6, 2:6])


def test_stretch_and_letterbox_geometry() -> None:
    image = Image.new("RGB", (4, 2), (200, 100, 50))
    stretch = dataclasses.replace(preprocess.PRESETS["raw"], resize="stretch")
    out = preprocess.image_to_array(image, _spec(height=6, width=3), stretch)
    assert out.shape == (3, 6, 3)
    np.testing.assert_array_equal(out[:, 0, 0], [200, 100, 50])
    box = dataclasses.replace(preprocess.PRESETS["raw"], resize="letterbox")
    out = preprocess.image_to_array(image, _spec(height=4, width=4), box)
    np.testing.assert_array_equal(out[:, 1:3, :], np.full((3, 2, 4), [[[200]], [[100]], [[50]]]))
    np.testing.assert_array_equal(out[:, [0, 3], :], 0)  # raw: mean 0 -> black bars
    imagenet = dataclasses.replace(preprocess.PRESETS["imagenet"], resize="letterbox")
    out = preprocess.image_to_array(image, _spec(height=4, width=4), imagenet)
    np.testing.assert_allclose(out[:, [0, 3], :], 0.0, atol=0.5 / 255 / 0.224)  # mean colour
    tall = preprocess.display_image(Image.new("RGB", (2, 4), (9, 9, 9)), _spec(height=4, width=4),
                                    box)
    np.testing.assert_array_equal(np.asarray(tall)[:, :, 0],
                                  [[0, 9, 9, 0]] * 4)  # bars left and right


def test_dynamic_size_uses_prep_size_else_the_image() -> None:
    prep = preprocess.PRESETS["unit"]
    assert preprocess.image_to_array(_columns(5, 3), _spec(channels=1), prep).shape == (1, 3, 5)
    sized = dataclasses.replace(prep, size=(4, 6))
    assert preprocess.image_to_array(_image(), _spec(), sized).shape == (3, 4, 6)
    half = InputSpec("x", "float32", "NCHW", 3, 4, None, None, (None, 3, 4, None))
    assert preprocess.image_to_array(Image.new("RGB", (8, 2)), half, prep).shape == (3, 4, 16)
    batch = preprocess.images_to_batch([_image(), _image()], _spec(), prep)
    assert batch.shape == (2, 3, 2, 3)
    with pytest.raises(InputError, match="different shapes .* set size"):
        preprocess.images_to_batch([_image(), _columns(5, 3)], _spec(), prep)
    with pytest.raises(InputError, match="no images"):
        preprocess.images_to_batch([], _spec(), prep)


def test_display_image_is_rgb_and_unnormalized() -> None:
    shown = preprocess.display_image(_image(), _spec(), preprocess.PRESETS["caffe"])
    assert shown.mode == "RGB" and shown.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(shown), PIXELS)
    deep = Image.fromarray(np.array([[0, 65535]], np.uint16))
    np.testing.assert_array_equal(np.asarray(preprocess.display_image(
        deep, _spec(channels=1), preprocess.PRESETS["mnist"]))[0], [[0, 0, 0], [255, 255, 255]])


def test_non_image_input_refuses_images() -> None:
    spec = preprocess.infer_input_spec(_identity_model([None, 784]))
    with pytest.raises(InputError, match=r"shape \(\?, 784\), which does not take images"):
        preprocess.image_to_array(_image(), spec, preprocess.PRESETS["unit"])


# -- check_batch ----------------------------------------------------------------------------
def test_check_batch_casts_and_copies() -> None:
    spec = preprocess.infer_input_spec(_identity_model(["N", 3, 4, 4]))
    batch = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    out = preprocess.check_batch(batch, spec)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(out, batch, rtol=1e-6)
    same = batch.astype(np.float32)
    assert preprocess.check_batch(same, spec) is not same
    uint = preprocess.infer_input_spec(_identity_model([1, 3, 4, 4], TensorProto.UINT8))
    assert preprocess.check_batch(np.full((5, 3, 4, 4), 255.0), uint).dtype == np.uint8


@pytest.mark.parametrize(("shape", "dtype", "match"), [
    ((3, 4, 4), "float32", r"expected a 4-D batch \(1, 3, 4, 4\) .* got shape \(3, 4, 4\); "
                           r"add a batch axis"),
    ((1, 1, 3, 4, 4), "float32", "reshape it to"),
    ((1, 4, 4, 3), "float32", r"axis 1 \(C\) is 4, not 3; the array looks NHWC: transpose"),
    ((1, 1, 4, 4), "float32", "give 3 channels"),
    ((1, 3, 5, 4), "float32", r"axis 2 \(H\) is 5, not 4; resize the images to 4x4"),
    ((0, 3, 4, 4), "float32", "holds no items"),
    ((1, 3, 4, 4), "<U1", "needs numbers"),
])
def test_check_batch_errors(shape: tuple[int, ...], dtype: str, match: str) -> None:
    spec = preprocess.infer_input_spec(_identity_model([1, 3, 4, 4]))
    with pytest.raises(InputError, match=match):
        preprocess.check_batch(np.zeros(shape, dtype), spec)


def test_check_batch_value_errors() -> None:
    half = preprocess.infer_input_spec(_identity_model([1, 3, 2, 2], TensorProto.FLOAT16))
    with pytest.raises(InputError, match="overflow float16"):
        preprocess.check_batch(np.full((1, 3, 2, 2), 1e6), half)
    uint = preprocess.infer_input_spec(_identity_model([1, 3, 2, 2], TensorProto.UINT8))
    with pytest.raises(InputError, match="non-integer"):
        preprocess.check_batch(np.full((1, 3, 2, 2), 0.5), uint)
    with pytest.raises(InputError, match=r"uint8 \(0..255\) but the array spans 0.0..300.0"):
        preprocess.check_batch(np.array([0.0, 300.0, 1, 1] * 3).reshape(1, 3, 2, 2), uint)
    handmade = InputSpec("x", "float32", "NCHW", 3, 4, 4, None)  # no shape: built from fields
    with pytest.raises(InputError, match=r"axis 3 \(W\) is 5, not 4"):
        preprocess.check_batch(np.zeros((1, 3, 4, 5)), handmade)
    nhwc = preprocess.infer_input_spec(_identity_model([1, 2, 2, 3]))
    with pytest.raises(InputError, match="looks NCHW: transpose it with array.transpose"):
        preprocess.check_batch(np.zeros((1, 3, 2, 2)), nhwc)


# -- shared data: the README recipes --------------------------------------------------------
def _readme_center_crop_resize(path: Path, short: int = 256, size: int = 224) -> np.ndarray:
    """The preprocessing code of ../shared/data/README.md, verbatim."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = short / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32)


@pytest.mark.slow
def test_squeezenet_caffe_recipe_matches_readme_and_predicts() -> None:
    ort = pytest.importorskip("onnxruntime")
    model = model_files.load_model(shared_path("models", "squeezenet1.1_caffe2_fp16.onnx"))
    spec = preprocess.infer_input_spec(model)
    assert (spec.dtype, spec.layout, spec.height, spec.width) == ("float16", "NCHW", 224, 224)
    prep = preprocess.resolve_preprocessing(spec, preset="caffe",
                                            base=preprocess.read_preprocessing(model))
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for name, label in (("cat_chelsea.png", 285), ("coffee_espresso.png", 967),
                        ("hot_dog.jpg", 934)):
        path = shared_path("images", name)
        x = _readme_center_crop_resize(path)
        x = (x[:, :, ::-1] - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)[None]
        batch = preprocess.images_to_batch([fileio.load_image(path)], spec, prep)
        assert batch.dtype == np.float16
        np.testing.assert_array_equal(batch, x.astype(np.float16))
        probs = session.run(None, {spec.name: batch})[0].ravel()
        assert int(probs.argmax()) == label, name


@pytest.mark.slow
def test_cifar_recipe_predicts_cat() -> None:
    ort = pytest.importorskip("onnxruntime")
    model = model_files.load_model(shared_path("models", "cifar10_cnn_pytorch.onnx"))
    spec = preprocess.infer_input_spec(model)
    assert (spec.layout, spec.height, spec.batch) == ("NCHW", 32, None)
    prep = preprocess.resolve_preprocessing(spec, mean=0.5, std=0.5, channel_order="RGB")
    assert (prep.scale, prep.crop_fraction, prep.size) == (1 / 255, 1.0, (32, 32))
    batch = preprocess.images_to_batch(
        [fileio.load_image(shared_path("images", "cat_chelsea.png"))], spec, prep)
    assert batch.shape == (1, 3, 32, 32) and -1.0 <= batch.min() and batch.max() <= 1.0
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    logits = session.run(None, {spec.name: batch})[0]
    assert int(logits.argmax()) == 3  # cat


def test_crop_fraction_option_crops_the_centre() -> None:
    """crop_fraction=0.5 on an 8x8 target: the short side goes to 16, the centre 8x8 is kept.
    A 16x16 image whose centre 8x8 is white gives an all-white input (hand-computed)."""
    spec = _spec(channels=1, height=8, width=8)
    prep = preprocess.resolve_preprocessing(spec, preset="unit", crop_fraction=0.5)
    assert prep.crop_fraction == 0.5 and prep.resize == "crop"
    pixels = np.zeros((16, 16), np.uint8)
    pixels[4:12, 4:12] = 255
    row = preprocess.image_to_array(Image.fromarray(pixels), spec, prep)
    np.testing.assert_array_equal(row, np.ones((1, 8, 8), np.float32))
    whole = preprocess.image_to_array(Image.fromarray(pixels), spec,
                                      preprocess.resolve_preprocessing(spec, preset="unit"))
    assert whole.min() == 0.0  # without it the black border is kept
    with pytest.raises(InputError, match="crop_fraction"):
        preprocess.resolve_preprocessing(spec, crop_fraction=1.5)
