"""Tests for ``io.filesystems``: listing image files on pyarrow filesystems and streaming image
bytes. The reference is the local engine's reader (``files.list_images``, ``data.open_data``) on
the same files, and the files as written."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from onnx_featviz.errors import InputError
from onnx_featviz.inspector import Inspector
from onnx_featviz.io import data as api_data
from onnx_featviz.io import files as fileio
from onnx_featviz.io import filesystems
from tests.conftest import MODELS

pafs = pytest.importorskip("pyarrow.fs")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Nested gray images named so that string order differs from path order, a hidden one,
    a text file and a broken image."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for rel in ("a/x.png", "a-b.png", "a/.hidden.png", "B.PNG", "c/d/e.JPG", "c/broken.png"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (28 + len(rel), 30), np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG" if rel.endswith("JPG") else "PNG")
    (root / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "notes.txt").write_text("not an image")
    return root


def test_is_uri() -> None:
    assert filesystems.is_uri("s3://bucket/val") and filesystems.is_uri("file:///data")
    assert not filesystems.is_uri("/data/val") and not filesystems.is_uri(Path("s3:/x"))


def test_uri_and_subtree_listings_equal_the_local_listing(folder: Path) -> None:
    local = [str(p) for p in fileio.list_images(folder)]
    assert [Path(p).relative_to(folder).as_posix() for p in local] == [
        "B.PNG", "a/x.png", "a-b.png", "c/broken.png", "c/d/e.JPG"]  # path order, not str
    plain = filesystems.list_image_files(folder)
    assert plain is not None and plain.filesystem is None and list(plain.paths) == local
    by_uri = filesystems.list_image_files(folder.as_uri())
    assert by_uri is not None and list(by_uri.paths) == local
    subtree = pafs.SubTreeFileSystem(str(folder.parent), pafs.LocalFileSystem())
    on_fs = filesystems.list_image_files("imgs", subtree)
    assert on_fs is not None and on_fs.filesystem is subtree
    assert list(on_fs.paths) == [f"imgs/{Path(p).relative_to(folder).as_posix()}"
                                 for p in local]


def test_listing_refuses_what_is_no_image_folder(folder: Path, tmp_path: Path) -> None:
    assert filesystems.list_image_files((folder / "notes.txt").as_uri()) is None
    assert filesystems.list_image_files(tmp_path / "x.npz") is None
    with pytest.raises(InputError, match="does not exist"):
        filesystems.list_image_files((tmp_path / "missing").as_uri())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        filesystems.list_image_files((tmp_path / "empty").as_uri())


def test_image_stream_equals_the_local_folder_stream(folder: Path) -> None:
    """Bytes streamed from input 2 on give the local stream's batches, sources and skips."""
    with Inspector(MODELS / "mnist_cnn.onnx", "cpu") as model_input:
        local = api_data.open_data(model_input, folder, batch_size=2, rows=(2, 5))
        expected = list(local)
        names = [str(p) for p in fileio.list_images(folder)][2:5]
        stream = filesystems.image_stream(model_input,
                                          [(n, Path(n).read_bytes()) for n in names],
                                          batch_size=2, first=2)
        got = list(stream)
    assert [b.sources for b in got] == [b.sources for b in expected]
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine.batch, theirs.batch)
    assert stream.skipped == local.skipped and len(stream.skipped) == 1
    source, reason = stream.skipped[0]
    assert source == str(folder / "c" / "broken.png") and "BytesIO" not in reason
    assert stream.done == local.done == 3


def test_arrays_open_through_a_pyarrow_file_as_locally(tmp_path: Path) -> None:
    """``open_data(opener=)`` reads a .npz (rows across two arrays) and a gzip IDX file on a
    pyarrow filesystem as the local path reads them, and as written."""
    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 256, (n, 28, 28), np.uint8) for n in (5, 4))
    np.savez(tmp_path / "two.npz", first=first, second=second)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, 5, 28, 28) + first.tobytes())
    subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    both = np.concatenate([first, second]).astype(np.float32) / np.float32(255.0)
    cases = (("two.npz", (3, 8), 9, both[3:8]), ("x-idx3-ubyte.gz", (2, 5), 5, both[2:5]))
    with Inspector(MODELS / "mnist_cnn.onnx", "cpu") as model_input:
        for name, rows, total, written in cases:
            def opener(name: str = name) -> Any:
                return subtree.open_input_file(name)

            local = list(api_data.open_data(model_input, tmp_path / name, batch_size=2,
                                            rows=rows))
            remote = list(api_data.open_data(model_input, name, batch_size=2, rows=rows,
                                             opener=opener))
            assert [len(b.batch) for b in remote] == [len(b.batch) for b in local]
            for mine, theirs in zip(remote, local, strict=True):
                np.testing.assert_array_equal(mine.batch, theirs.batch)
            got = np.concatenate([b.batch for b in remote])[:, 0]
            np.testing.assert_allclose(got, written, rtol=0, atol=1e-6)
            assert api_data.data_size(model_input, name, opener=opener) == total
