"""api_data: every DATA kind streamed in batches, checked against the Inspector's own loading and
against independent numpy / gzip parsing; unreadable inputs skipped and counted; clear errors."""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_featviz import api
from onnx_featviz.errors import InputError
from onnx_featviz.io import data as api_data
from onnx_featviz.io.data import DataBatch, DataStream
from tests import graphs
from tests.conftest import MODELS, shared_path


def rgb_inspector() -> api.Inspector:
    """small_cnn: (N, 3, 16, 16) float32, default ``unit`` preprocessing (pixels / 255)."""
    return api.Inspector(graphs.small_cnn(), "cpu")


def gray_inspector() -> api.Inspector:
    """conv_relu_dynamic: (N, 1, 4, 4) float32, ``mnist`` preprocessing for 1 channel."""
    return api.Inspector(graphs.conv_relu_dynamic(), "cpu")


def collect(stream: DataStream) -> tuple[np.ndarray, tuple[str, ...], list[DataBatch]]:
    batches = list(stream)
    return (np.concatenate([b.batch for b in batches]),
            tuple(s for b in batches for s in b.sources), batches)


def write_png(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    bands = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], bands), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if bands == 1 else pixels, mode).save(path)
    return path


def write_idx(path: Path, images: np.ndarray, *, compress: bool, magic: int = 2051,
              cut: int = 0) -> Path:
    """An IDX file as MNIST has it: big-endian header, uint8 pixels (``cut`` bytes dropped)."""
    n, rows, cols = images.shape
    data = struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()
    data = data[:len(data) - cut]
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


# -- images ----------------------------------------------------------------------------------
def test_single_image_file(tmp_path: Path) -> None:
    image = write_png(tmp_path / "one.png", (20, 12), 0)
    with rgb_inspector() as inspector:
        stream = api_data.open_data(inspector, image)
        rows, sources, _ = collect(stream)
        expected = inspector.load_batch([image]).array
    assert stream.total == 1 and stream.kind == "image" and stream.skipped == []
    assert sources == (str(image),)
    np.testing.assert_array_equal(rows, expected)
    assert rows.shape == (1, 3, 16, 16) and rows.dtype == np.float32


def test_nested_folder_mixed_sizes_and_a_corrupt_png(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    files = [write_png(tmp_path / "a.png", (16, 16), 1),
             write_png(tmp_path / "sub" / "b.jpg", (40, 25), 2),
             write_png(tmp_path / "sub" / "deeper" / "c.PNG", (9, 30), 3, mode="L"),
             write_png(tmp_path / "z.bmp", (64, 48), 4)]
    (tmp_path / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "notes.txt").write_text("not an image")
    write_png(tmp_path / ".hidden" / "skip.png", (16, 16), 5)
    with rgb_inspector() as inspector, caplog.at_level(logging.WARNING):
        stream = api_data.open_data(inspector, tmp_path, batch_size=3)
        rows, sources, batches = collect(stream)
        expected = inspector.load_batch(files).array
    assert stream.total == 5  # the broken png is listed, then skipped
    # batch k holds the readable files among listed files [3k, 3k + 3): a.png, sub/b.jpg
    # (sub/broken.png, third in sorted order, leaves the first batch short), then c.PNG, z.bmp
    assert [len(b.batch) for b in batches] == [2, 2]
    assert sorted(sources) == sorted(str(f) for f in files)
    order = [sources.index(str(f)) for f in files]
    np.testing.assert_array_equal(rows[order], expected)  # resized like the Inspector does
    # independent of the package: a.png is already 16x16, so its row is pixels / 255 (CHW)
    pixels = np.asarray(Image.open(files[0]), np.float32).transpose(2, 0, 1)
    np.testing.assert_allclose(rows[sources.index(str(files[0]))], pixels / 255.0, rtol=0,
                               atol=1e-7)
    assert [s for s, _ in stream.skipped] == [str(tmp_path / "sub" / "broken.png")]
    assert "cannot read image" in stream.skipped[0][1]
    assert stream.done == 5
    assert "skipped" in caplog.text and "broken.png" in caplog.text
    list(stream)  # a second pass starts afresh
    assert len(stream.skipped) == 1


def test_dynamic_size_model_splits_batches_at_a_size_change(tmp_path: Path) -> None:
    model = graphs.conv_relu_dynamic()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    for name, size in (("a", (6, 6)), ("b", (6, 6)), ("c", (8, 5))):
        write_png(tmp_path / f"{name}.png", size, 0, mode="L")
    with api.Inspector(model, "cpu") as inspector:
        batches = list(api_data.open_data(inspector, tmp_path, batch_size=8))
    assert [b.batch.shape for b in batches] == [(2, 1, 6, 6), (1, 1, 5, 8)]


# -- arrays ----------------------------------------------------------------------------------
def test_npy_float_nchw_nhwc_and_gray_without_channel(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((7, 3, 16, 16)).astype(np.float64)
    np.save(tmp_path / "nchw.npy", x)
    np.save(tmp_path / "nhwc.npy", x.transpose(0, 2, 3, 1))
    with rgb_inspector() as inspector:
        for name in ("nchw.npy", "nhwc.npy"):
            stream = api_data.open_data(inspector, tmp_path / name, batch_size=3)
            rows, sources, batches = collect(stream)
            assert stream.total == 7 and [len(b.batch) for b in batches] == [3, 3, 1]
            np.testing.assert_array_equal(rows, x.astype(np.float32))  # fed as they are
            assert sources[4] == f"{tmp_path / name}[4]"
    gray = np.random.default_rng(1).random((5, 4, 4), np.float32)
    np.save(tmp_path / "gray.npy", gray)
    with gray_inspector() as inspector:
        rows, _, _ = collect(api_data.open_data(inspector, tmp_path / "gray.npy"))
    np.testing.assert_array_equal(rows, gray[:, None])


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_uint8_arrays_are_images(tmp_path: Path, layout: str) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (4, 20, 24, 3), np.uint8)
    stored = {"NHW": pixels[..., 0], "NHWC": pixels, "NCHW": pixels.transpose(0, 3, 1, 2)}
    np.save(tmp_path / "u8.npy", stored[layout])
    pictures = [Image.fromarray(p[..., 0] if layout == "NHW" else p) for p in pixels]
    with rgb_inspector() as inspector:
        rows, _, _ = collect(api_data.open_data(inspector, tmp_path / "u8.npy"))
        expected = inspector.load_batch(pictures).array
    np.testing.assert_array_equal(rows, expected)  # resized 20x24 -> 16x16 and / 255


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_uint8_arrays_at_model_size_equal_pixels_over_255(tmp_path: Path, layout: str) -> None:
    """Reference by hand (no resize at the model's 16x16): gray rows are replicated to RGB."""
    pixels = np.random.default_rng(9).integers(0, 256, (5, 16, 16, 3), np.uint8)
    stored = {"NHW": pixels[..., 0], "NHWC": pixels, "NCHW": pixels.transpose(0, 3, 1, 2)}
    np.save(tmp_path / "u8.npy", stored[layout])
    expected = (np.repeat(pixels[..., :1], 3, axis=3) if layout == "NHW" else pixels)
    expected = expected.transpose(0, 3, 1, 2) / 255.0
    with rgb_inspector() as inspector:
        rows, _, _ = collect(api_data.open_data(inspector, tmp_path / "u8.npy", batch_size=2))
    assert rows.shape == (5, 3, 16, 16) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-7)


def test_npz_keys_and_an_array_that_does_not_fit(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    images = np.random.default_rng(3).standard_normal((5, 3, 16, 16)).astype(np.float32)
    np.savez_compressed(tmp_path / "set.npz", x_test=images, y_test=np.arange(5))
    with rgb_inspector() as inspector, caplog.at_level(logging.WARNING):
        stream = api_data.open_data(inspector, tmp_path / "set.npz", batch_size=2)
        rows, sources, _ = collect(stream)
    np.testing.assert_array_equal(rows, images)
    assert stream.total == 5
    assert sources[0] == f"{tmp_path / 'set.npz'}:x_test[0]"
    assert [s for s, _ in stream.skipped] == [f"{tmp_path / 'set.npz'}:y_test"]
    np.savez(tmp_path / "single.npz", images)
    with rgb_inspector() as inspector:
        _, sources, _ = collect(api_data.open_data(inspector, tmp_path / "single.npz"))
    assert sources[2] == f"{tmp_path / 'single.npz'}[2]"


def test_npz_of_uint8_images_and_uint8_labels(tmp_path: Path) -> None:
    """The MNIST-style .npz: (N, H, W) uint8 images and (N,) uint8 labels side by side."""
    images = np.random.default_rng(8).integers(0, 256, (6, 4, 4), np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", labels=labels, images=images)
    with gray_inspector() as inspector:
        stream = api_data.open_data(inspector, tmp_path / "mnist.npz", batch_size=4)
        rows, sources, _ = collect(stream)
    np.testing.assert_allclose(rows[:, 0], images / np.float32(255), rtol=0, atol=1e-7)
    assert stream.total == 6 and sources[5] == f"{tmp_path / 'mnist.npz'}:images[5]"
    assert [s for s, _ in stream.skipped] == [f"{tmp_path / 'mnist.npz'}:labels"]


def test_truncated_npy_yields_what_it_has(tmp_path: Path) -> None:
    x = np.random.default_rng(4).standard_normal((6, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "cut.npy", x)
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-100])
    with rgb_inspector() as inspector:
        stream = api_data.open_data(inspector, tmp_path / "cut.npy", batch_size=4)
        rows, _, _ = collect(stream)
    # 100 bytes short of 6 rows of 3072 bytes: rows 0-4 are whole, row 5 is cut
    np.testing.assert_array_equal(rows, x[:5])
    assert stream.skipped == [(f"{tmp_path / 'cut.npy'}[5:6]",
                               "the file ends early (truncated)")]
    assert stream.done == 6


# -- MNIST IDX ----------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_idx_gz_and_raw_equal_numpy(tmp_path: Path, compress: bool) -> None:
    images = np.random.default_rng(5).integers(0, 256, (11, 4, 4), np.uint8)
    path = write_idx(tmp_path / ("t.idx.gz" if compress else "t-idx3-ubyte"), images,
                     compress=compress)
    with gray_inspector() as inspector:
        stream = api_data.open_data(inspector, path, batch_size=4)
        rows, sources, batches = collect(stream)
    assert stream.kind == "idx" and stream.total == 11
    assert [len(b.batch) for b in batches] == [4, 4, 3]
    # mnist preprocessing: pixels / 255, mean 0, std 1
    np.testing.assert_allclose(rows[:, 0], images / np.float32(255), rtol=0, atol=1e-7)
    assert sources[10] == f"{path}[10]"


def test_truncated_idx_and_labels_file(tmp_path: Path) -> None:
    images = np.random.default_rng(6).integers(0, 256, (10, 4, 4), np.uint8)
    path = write_idx(tmp_path / "cut.gz", images, compress=True, cut=40)
    with gray_inspector() as inspector:
        stream = api_data.open_data(inspector, path, batch_size=4)
        rows, _, _ = collect(stream)
        # 160 - 40 = 120 pixel bytes of 16 per image: images 0-6 are whole, only 7-9 missing
        np.testing.assert_allclose(rows[:, 0], images[:7] / np.float32(255), rtol=0, atol=1e-7)
        assert stream.skipped == [(f"{path}[7:10]", "the file ends early (truncated)")]
        assert stream.done == 10
        labels = write_idx(tmp_path / "labels.gz", images[:, :1, :1], compress=True,
                           magic=2049)
        with pytest.raises(InputError, match="IDX labels file .*images file"):
            api_data.open_data(inspector, labels)


def test_cut_gzip_stream_keeps_every_whole_image(tmp_path: Path) -> None:
    """A gzip file cut mid-stream (gzip raises EOFError): every image zlib can still
    decompress is kept, none of the rows read before the error is lost."""
    images = np.random.default_rng(7).integers(0, 256, (3000, 4, 4), np.uint8)
    whole = write_idx(tmp_path / "whole.gz", images, compress=True).read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    readable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut.read_bytes())
    kept = (len(readable) - 16) // 16
    assert 0 < kept < 3000
    with gray_inspector() as inspector:
        stream = api_data.open_data(inspector, cut, batch_size=256)
        rows, _, _ = collect(stream)
    np.testing.assert_allclose(rows[:, 0], images[:kept] / np.float32(255), rtol=0, atol=1e-7)
    ((source, reason),) = stream.skipped
    assert source == f"{cut}[{kept}:3000]" and reason.startswith("cannot read images (EOFError")
    assert stream.done == 3000


@pytest.mark.slow
def test_mnist_t10k_streams_every_image_exactly() -> None:
    path = shared_path("mnist", "t10k-images-idx3-ubyte.gz")
    raw = gzip.decompress(path.read_bytes())
    reference = np.frombuffer(raw, np.uint8, offset=16).reshape(10000, 28, 28)
    with api.Inspector(MODELS / "mnist_cnn.onnx", "cpu") as inspector:
        stream = api_data.open_data(inspector, path, batch_size=512)
        count, first, last = 0, None, None
        for part in stream:
            first = part.batch if first is None else first
            last = part.batch
            count += len(part.batch)
    assert count == stream.total == stream.done == 10000 and stream.skipped == []
    assert first is not None and last is not None
    np.testing.assert_allclose(first[:, 0], reference[:512] / np.float32(255), atol=1e-7)
    np.testing.assert_allclose(last[:, 0], reference[-len(last):] / np.float32(255), atol=1e-7)


# -- errors ----------------------------------------------------------------------------------
def test_errors_say_what_to_give(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.dat").write_bytes(b"\x00\x01\x02\x03whatever")
    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 7), np.float32))
    with rgb_inspector() as inspector:
        with pytest.raises(InputError, match="does not exist; give an image file"):
            api_data.open_data(inspector, tmp_path / "missing.png")
        with pytest.raises(InputError, match=r"holds no images; add files ending in \.png"):
            api_data.open_data(inspector, tmp_path / "empty")
        with pytest.raises(InputError, match="cannot tell what DATA .* is .*MNIST IDX"):
            api_data.open_data(inspector, tmp_path / "data.dat")
        with pytest.raises(InputError, match="float arrays are fed as they are"):
            api_data.open_data(inspector, tmp_path / "bad.npy")
        with pytest.raises(InputError, match="batch_size must be at least 1"):
            api_data.open_data(inspector, tmp_path, batch_size=0)


def test_every_input_unreadable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"junk")
    (tmp_path / "b.jpg").write_bytes(b"junk")
    with rgb_inspector() as inspector:
        stream = api_data.open_data(inspector, tmp_path)
        with pytest.raises(InputError, match=r"no input .* could be read \(2 skipped; first: "):
            list(stream)
