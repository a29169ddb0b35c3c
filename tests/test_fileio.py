"""Tests for onnx_featviz.io.files: model/image/array loading and atomic saving."""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.io import external as model_files
from onnx_featviz.io import files as fileio
from tests import graphs


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _external_model(folder: Path, location: str = "w.bin") -> Path:
    """Save conv_relu with every initializer in one external file ``location`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(graphs.conv_relu(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def _relocate(path: Path, location: str) -> None:
    """Rewrite the external ``location`` of every tensor of the model file at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


# -- load_model -----------------------------------------------------------------------------
def test_load_model_from_path_and_bytes_equal_the_original(tmp_path: Path) -> None:
    model = graphs.conv_relu()
    data = model.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    assert model_files.load_model(path).SerializeToString() == data
    assert model_files.load_model(str(path)).SerializeToString() == data
    assert model_files.load_model(data).SerializeToString() == data
    assert path.read_bytes() == data


def test_load_model_external_data_from_another_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _external_model(tmp_path / "models")
    before = (path.read_bytes(), (path.parent / "w.bin").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = model_files.load_model(path)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(weights["w"], np.ones((1, 1, 3, 3), np.float32))
    np.testing.assert_array_equal(weights["b"], np.zeros((1,), np.float32))
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert (path.read_bytes(), (path.parent / "w.bin").read_bytes()) == before
    assert _files(path.parent) == ["model.onnx", "w.bin"]
    onnx.checker.check_model(model)


def test_load_model_relative_path_with_external_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _external_model(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    model = model_files.load_model(Path("models") / "model.onnx")
    assert len(model.graph.initializer) == 2


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.onnx", b"", "is empty (0 bytes); export the network to .onnx first"),
        ("random.onnx", np.random.default_rng(0).bytes(4096),
         "is not an ONNX model (DecodeError"),
        ("text.onnx", b"hello, I am a text file\nnot a network\n", "it looks like text"),
        ("blank.onnx", b"   \n", "no graph or no nodes"),
        ("truncated.onnx", graphs.conv_relu().SerializeToString()[:100], "may be truncated"),
        ("cut_end.onnx", graphs.conv_relu().SerializeToString()[:-1], "not an ONNX model"),
    ],
    ids=["empty", "random", "text", "blank", "truncated", "cut_end"],
)
def test_load_model_refuses_non_models(tmp_path: Path, name: str, content: bytes,
                                       expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match="export") as info:
        model_files.load_model(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == content


def test_load_model_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not exist; check the path"):
        model_files.load_model(tmp_path / "nope.onnx")
    (tmp_path / "a.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"is a folder \(it holds a.onnx\); give the .onnx file"):
        model_files.load_model(tmp_path)


def test_load_model_refuses_graphless_and_truncated_after_graph() -> None:
    with pytest.raises(ModelError, match="no graph or no nodes"):
        model_files.load_model(onnx.ModelProto(ir_version=8).SerializeToString())
    model = graphs.conv_relu()
    del model.opset_import[:]  # what a cut right after the graph field leaves
    with pytest.raises(ModelError, match="incomplete ONNX model.*0 opset imports"):
        model_files.load_model(model.SerializeToString())


def test_load_model_missing_external_file_names_it_and_the_folder(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelError) as info:
        model_files.load_model(path)
    message = str(info.value)
    assert "'w.bin'" in message and str(tmp_path) in message and "copy it beside" in message


def test_load_model_refuses_external_data_outside_its_folder(tmp_path: Path) -> None:
    path = _external_model(tmp_path / "models")
    shutil.copy(tmp_path / "models" / "w.bin", tmp_path / "x.bin")
    _relocate(path, "../x.bin")
    with pytest.raises(ModelError, match=r"outside the model's folder .*move the data file"):
        model_files.load_model(path)
    _relocate(path, str(tmp_path / "x.bin"))
    with pytest.raises(ModelError, match=r"absolute path .*only files inside"):
        model_files.load_model(path)


def test_load_model_refuses_symlink_escaping_its_folder(tmp_path: Path) -> None:
    path = _external_model(tmp_path / "models")
    shutil.move(tmp_path / "models" / "w.bin", tmp_path / "w.bin")
    (tmp_path / "models" / "w.bin").symlink_to(tmp_path / "w.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        model_files.load_model(path)


def test_load_model_refuses_truncated_external_file(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    data_file = tmp_path / "w.bin"
    data_file.write_bytes(data_file.read_bytes()[:10])
    with pytest.raises(ModelError, match="the file is truncated; copy it again"):
        model_files.load_model(path)


def test_load_model_bytes_with_external_data_is_refused(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    with pytest.raises(ModelError, match="load the model from its file path"):
        model_files.load_model(path.read_bytes())


@pytest.mark.slow
def test_load_and_save_model_over_2gb(tmp_path: Path) -> None:
    """A 2.2 GB initializer loads from external data and saves back with external data."""
    if shutil.disk_usage(tmp_path).free < 8 * 2**30:
        pytest.skip("needs 8 GB of free disk for a model over 2 GB")
    count = 2**31 // 4 + 2**24  # float32 elements: about 2.2 GB
    (tmp_path / "big.bin").write_bytes(b"")
    os.truncate(tmp_path / "big.bin", count * 4)  # sparse file of zeros: fast to create
    weight = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[count])
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="big.bin")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])], "big",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [count])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [count])], [weight])
    model_path = tmp_path / "big.onnx"
    model_path.write_bytes(onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8
    ).SerializeToString())
    model = model_files.load_model(model_path)
    assert len(model.graph.initializer[0].raw_data) == count * 4 > 2**31
    model_files.save_model(model, tmp_path / "out" / "copy.onnx")
    assert (tmp_path / "out" / "copy.onnx").stat().st_size < 2**20
    assert (tmp_path / "out" / "copy.onnx.data").stat().st_size >= count * 4
    assert len(model.graph.initializer[0].raw_data) == count * 4  # caller's model untouched


# -- save_model -----------------------------------------------------------------------------
def test_save_model_small_round_trip(tmp_path: Path) -> None:
    model = graphs.conv_relu()
    data = model.SerializeToString()
    model_files.save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == data
    assert _files(tmp_path) == ["out.onnx"]


def test_save_model_with_external_data_when_over_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weight = np.arange(2048, dtype=np.float32).reshape(1, 1, 32, 64)
    model = graphs.conv_relu()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    before = model.SerializeToString()
    monkeypatch.setattr(model_files, "_PROTO_LIMIT", 1000)
    model_files.save_model(model, tmp_path / "big.onnx")
    assert model.SerializeToString() == before
    assert _files(tmp_path) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < 1000
    loaded = model_files.load_model(tmp_path / "big.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), weight)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[1]),
                                  np.zeros(1, np.float32))


# -- images ---------------------------------------------------------------------------------
def _rgb_pixels() -> np.ndarray:
    return np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                     [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp", ".gif", ".jpg"])
def test_load_image_formats(tmp_path: Path, suffix: str) -> None:
    pixels = _rgb_pixels()
    path = tmp_path / f"img{suffix}"
    options = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(pixels).save(path, **options)
    image = fileio.load_image(path)
    assert image.size == (3, 2)
    if suffix == ".jpg":
        assert image.mode == "RGB"
        return
    if suffix == ".gif":
        assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), pixels)


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.new("RGB", (4, 2), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert Image.open(path).size == (4, 2)
    loaded = fileio.load_image(path)
    assert loaded.size == (2, 4)
    assert loaded.getexif().get(0x0112) is None


def test_load_image_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (3, 2), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=10)
    image = fileio.load_image(path)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[0, 0], [255, 0, 0])


def test_load_image_keeps_16_bit_and_palette_and_rgba(tmp_path: Path) -> None:
    deep = Image.fromarray(np.array([[0, 257, 65535]], np.uint16))
    deep.save(tmp_path / "deep.png")
    loaded = fileio.load_image(tmp_path / "deep.png")
    assert loaded.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(loaded), [[0, 257, 65535]])
    Image.new("RGBA", (2, 2), (1, 2, 3, 4)).save(tmp_path / "alpha.png")
    assert fileio.load_image(tmp_path / "alpha.png").mode == "RGBA"
    Image.new("RGB", (2, 2), (9, 8, 7)).convert("P").save(tmp_path / "pal.png")
    assert fileio.load_image(tmp_path / "pal.png").mode == "P"


def test_load_image_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does not exist; give an image file \(.png"):
        fileio.load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a folder"):
        fileio.load_image(tmp_path)
    corrupt = tmp_path / "corrupt.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    corrupt.write_bytes(buffer.getvalue()[:60])
    with pytest.raises(InputError, match=r"cannot read image .*give a valid image file"):
        fileio.load_image(corrupt)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(InputError, match="UnidentifiedImageError"):
        fileio.load_image(tmp_path / "text.jpg")


def _png_claiming(size: tuple[int, int]) -> bytes:
    """A valid 1x1 PNG whose IHDR chunk claims ``size`` (only the header is read on open)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", *size)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("factor", [1.5, 3.0])  # warning zone and error zone of Pillow
def test_load_image_decompression_bomb(tmp_path: Path, factor: float) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None
    side = int((limit * factor) ** 0.5) + 1
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming((side, side)))
    filters_before = list(warnings.filters)
    with pytest.raises(InputError, match="too large to decode safely.*resize it"):
        fileio.load_image(path)
    assert Image.MAX_IMAGE_PIXELS == limit
    assert list(warnings.filters) == filters_before


def test_load_image_bomb_made_by_pillow(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(path)
    assert path.stat().st_size < 2**20
    with pytest.raises(InputError, match="too large"):
        fileio.load_image(path)


def test_list_images(tmp_path: Path) -> None:
    for rel in ("b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.gif", "notes.txt", ".hidden.png",
                ".cache/e.png", "x.npy"):
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    found = fileio.list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.JPG", "b.png", "sub/c.webp", "sub/deeper/d.gif"]
    assert fileio.list_images(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"holds no images; add files ending in .png, .jpg"):
        fileio.list_images(empty)
    with pytest.raises(InputError, match="does not exist"):
        fileio.list_images(tmp_path / "nope")


# -- arrays ---------------------------------------------------------------------------------
def test_load_array_file(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    np.save(tmp_path / "one.npy", a)
    assert list(fileio.load_array_file(tmp_path / "one.npy")) == ["one"]
    np.testing.assert_array_equal(fileio.load_array_file(tmp_path / "one.npy")["one"], a)
    np.savez(tmp_path / "two.npz", first=a, second=a * 2)
    loaded = fileio.load_array_file(tmp_path / "two.npz")
    assert list(loaded) == ["first", "second"]
    np.testing.assert_array_equal(loaded["second"], a * 2)


def test_load_array_file_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must end in .npy or .npz"):
        fileio.load_array_file(tmp_path / "x.txt")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read array file"):
        fileio.load_array_file(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="no pickled objects"):
        fileio.load_array_file(tmp_path / "obj.npy")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(InputError, match="holds no arrays"):
        fileio.load_array_file(tmp_path / "empty.npz")
    with pytest.raises(InputError, match="cannot read array file"):
        fileio.load_array_file(tmp_path / "missing.npz")


# -- savers ---------------------------------------------------------------------------------
def test_save_npz_round_trip_with_tensor_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"featviz/dequant/x": rng.standard_normal((2, 3)).astype(np.float32),
              "conv1:0": np.arange(4, dtype=np.int8), "file": np.ones(2), "x.npy": np.zeros(1)}
    fileio.save_npz(arrays, tmp_path / "acts.npz")
    with np.load(tmp_path / "acts.npz") as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(loaded[key], value)
            assert loaded[key].dtype == value.dtype
    assert _files(tmp_path) == ["acts.npz"]
    with pytest.raises(InputError, match="dtype object"):
        fileio.save_npz({"o": np.array([None])}, tmp_path / "o.npz")


def test_save_image_formats(tmp_path: Path) -> None:
    image = Image.fromarray(_rgb_pixels())
    fileio.save_image(image, tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), _rgb_pixels())
    fileio.save_image(image.convert("RGBA"), tmp_path / "b.JPG")
    with Image.open(tmp_path / "b.JPG") as saved:
        assert (saved.format, saved.mode, saved.size) == ("JPEG", "RGB", (3, 2))
    with pytest.raises(InputError, match=r"from '.xyz'; use one of .png"):
        fileio.save_image(image, tmp_path / "c.xyz")
    assert _files(tmp_path) == ["a.png", "b.JPG"]


def test_save_json_and_bytes(tmp_path: Path) -> None:
    fileio.save_json({"a": np.float32(1.5), "b": np.arange(2), "p": Path("x"), "é": 1},
                     tmp_path / "sub" / "r.json")
    text = (tmp_path / "sub" / "r.json").read_text(encoding="utf-8")
    assert text == '{\n  "a": 1.5,\n  "b": [\n    0,\n    1\n  ],\n  "p": "x",\n  "é": 1\n}\n'
    fileio.save_bytes(b"abc", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"abc"
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


def test_savers_refuse_unwritable_paths(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    target = blocker / "out.png"
    savers = [
        lambda: fileio.save_image(Image.new("RGB", (1, 1)), target),
        lambda: fileio.save_npz({"a": np.zeros(1)}, blocker / "a.npz"),
        lambda: fileio.save_json({}, blocker / "a.json"),
        lambda: fileio.save_bytes(b"x", blocker / "a.bin"),
        lambda: model_files.save_model(graphs.conv_relu(), blocker / "m.onnx"),
        lambda: fileio.save_bytes(b"x", tmp_path),  # a folder
    ]
    for save in savers:
        with pytest.raises(InputError, match=r"cannot write .*; choose a writable path"):
            save()
    assert _files(tmp_path) == ["file.txt"]


def test_atomic_write_interrupted_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def interrupted(fh: io.BufferedWriter) -> None:
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio._atomic_write(path, interrupted)
    assert path.read_bytes() == b"old"
    assert _files(tmp_path) == ["out.bin"]


def test_writers_refuse_a_device_or_pipe(tmp_path: Path) -> None:
    """A rename over a FIFO (or, as root, /dev/full) would replace the node: refused, untouched."""
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        fileio.check_writable([fifo])
    with pytest.raises(InputError, match="not a regular file"):
        fileio.save_json({"a": 1}, fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left
