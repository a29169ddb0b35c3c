"""Fuzz the model and image loaders: every input succeeds or raises FeatvizError (one line).

The hypothesis tests draw the mutators of ``tools/fuzz_cases.py`` and ``fuzz_images.py``
(shared with ``tools/fuzz.py``) through ``st.data()``, derandomized; each case runs under a 30 s
alarm and an address-space cap of 2 GiB above the current size, so a regression fails instead of
hanging the suite or eating the machine. The regression tests below each hold the minimal
reproducer of one bug the fuzzers found.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx_featviz import api
from onnx_featviz.errors import FeatvizError, InputError, ModelError
from onnx_featviz.io import external as model_files
from onnx_featviz.io import files as fileio
from tests.conftest import run
from tools import fuzz_cases as fc
from tools import fuzz_images as fi

_GIB = 2**30
_FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def _chooser(data: st.DataObject) -> fc.Chooser:
    return lambda n: data.draw(st.integers(0, n - 1)) if n > 1 else 0


def _check(steps: Sequence[tuple[str, Callable[[], object]]]) -> None:
    with fc.guarded(30, 2 * _GIB):
        outcome = fc.run_steps(steps)
    assert outcome.outcome in ("ok", "error"), f"{outcome.step}: {outcome.detail}"


@pytest.fixture
def case_dir() -> Iterator[Path]:
    """A fresh folder per call (hypothesis reuses function fixtures across examples)."""
    with tempfile.TemporaryDirectory(prefix="featviz-fuzz-") as name:
        yield Path(name)


def _fuzz_models(data: st.DataObject, kinds: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="featviz-fuzz-") as name:
        path, label = fc.write_model_case(Path(name), _chooser(data), kinds)
        data.draw(st.just(label), label="case")
        _check(fc.model_steps(path))


# -- fuzzing ------------------------------------------------------------------------------------
@pytest.mark.slow
@_FUZZ
@given(data=st.data())
def test_protobuf_field_mutations(data: st.DataObject) -> None:
    """Dims, data types, raw data, drops, metadata JSON, opsets/IR, nodes, input types."""
    _fuzz_models(data, ("proto",))


@pytest.mark.slow
@settings(_FUZZ, max_examples=60)
@given(data=st.data())
def test_names_external_data_and_special_paths(data: st.DataObject) -> None:
    """Non-UTF-8 strings, external data (outside, links, loops, FIFOs), device model paths."""
    _fuzz_models(data, ("names", "external", "special"))


@pytest.mark.slow
@settings(_FUZZ, max_examples=60)
@given(data=st.data())
def test_model_byte_mutations(data: st.DataObject) -> None:
    """Flipped, inserted, deleted and truncated bytes of the serialized models."""
    _fuzz_models(data, ("bytes",))


@pytest.mark.slow
@settings(_FUZZ, max_examples=250)
@given(data=st.data())
def test_image_and_array_mutations(data: st.DataObject) -> None:
    """PNG/JPEG/BMP/GIF/TIFF/WebP, .npy/.npz and labels files: bytes, chunks, headers, bombs."""
    with tempfile.TemporaryDirectory(prefix="featviz-fuzz-") as name:
        path, label = fi.write_image_case(Path(name), _chooser(data))
        data.draw(st.just(label), label="case")
        _check(fc.image_steps(path))


# -- regressions: one minimal reproducer per fix -----------------------------------------------
def _save(model: onnx.ModelProto, folder: Path, data: bytes | None = None) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(data if data is not None else model.SerializeToString())
    return path


def _with_meta(key: str, value: str) -> onnx.ModelProto:
    model = fc.conv_classifier()
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    return model


@pytest.mark.parametrize("value", ["null", '{"a": 1}', "[[1]]", "[" * 50000])
def test_labels_metadata_that_is_no_list_is_a_model_error(value: str, case_dir: Path) -> None:
    path = _save(_with_meta("featviz.labels", value), case_dir)
    with pytest.raises(ModelError, match="featviz.labels"):
        api.Inspector(path)
    result = run("info", path)
    assert result.exit_code == 1 and "featviz.labels" in result.output


def test_deeply_nested_preprocess_metadata_is_a_model_error(case_dir: Path) -> None:
    path = _save(_with_meta("featviz.preprocess", "[" * 50000), case_dir)
    with pytest.raises(ModelError, match="featviz.preprocess"):
        api.Inspector(path)


@pytest.mark.parametrize("data_type", [99, -1, 2**31 - 1])
def test_unknown_data_type_still_lists_the_layers(data_type: int, case_dir: Path) -> None:
    model = fc.conv_classifier()
    model.graph.initializer[0].data_type = data_type
    model.graph.output[0].type.tensor_type.elem_type = data_type
    path = _save(model, case_dir)
    info = api.inspect_model(path)
    assert [layer.name for layer in info.layers] == [n.name for n in model.graph.node]
    assert info.outputs[0].dtype == "unknown"
    result = run("info", path)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1)


@pytest.mark.parametrize("field", ["node", "op_type", "metadata", "producer"])
def test_non_utf8_strings_are_a_model_error(field: str, case_dir: Path) -> None:
    model = fc.conv_classifier()
    marker = "@@fuzz@@"
    if field == "node":
        model.graph.node[0].name = marker
    elif field == "op_type":
        model.graph.node[1].op_type = marker
    elif field == "metadata":
        model.metadata_props[0].value = marker
    else:
        model.producer_name = marker
    data = model.SerializeToString().replace(marker.encode(), b"\xff\xfe\xc3\x28abcd")
    path = _save(model, case_dir, data)
    with pytest.raises(ModelError, match="not UTF-8"):
        model_files.load_model(path)
    result = run("info", path)
    assert result.exit_code == 1 and "not UTF-8" in result.output


def _external(case_dir: Path, location: str, *, offset: str = "0") -> Path:
    model = fc.conv_classifier()
    tensor = model.graph.initializer[0]
    raw = tensor.raw_data
    (case_dir / "weights.bin").write_bytes(raw)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", str(len(raw)))):
        tensor.external_data.add(key=key, value=value)
    return _save(model, case_dir)


def test_external_data_symlink_loop_is_a_model_error(case_dir: Path) -> None:
    os.symlink("loop.bin", case_dir / "loop.bin")
    path = _external(case_dir, "loop.bin")
    with pytest.raises(ModelError, match="loop.bin"):
        model_files.load_model(path)
    assert run("info", path).exit_code == 1


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_external_data_that_is_no_regular_file_is_refused(kind: str, case_dir: Path) -> None:
    target = case_dir / "data.bin"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        os.symlink("/dev/zero", target)
    else:
        target.mkdir()
    path = _external(case_dir, "data.bin")
    with fc.guarded(10, _GIB), pytest.raises(ModelError, match="not a regular file|outside"):
        model_files.load_model(path)


def test_negative_external_offset_is_a_model_error(case_dir: Path) -> None:
    with pytest.raises(ModelError, match="negative external offset -1"):
        model_files.load_model(_external(case_dir, "weights.bin", offset="-1"))


def test_huge_declared_input_skips_the_shape_probe(case_dir: Path) -> None:
    """A 10**6 x 10**6 input with a node inference cannot type made info allocate 12 TB."""
    model = fc.dynamic_conv()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 10**6
    model.graph.node[1].domain = "x.y"  # unknown domain: shape inference gives up
    with fc.guarded(30, _GIB), api.Inspector(model, "cpu") as inspector:
        layers = inspector.info.layers
        with pytest.raises(InputError, match="pixels"):
            inspector.predict(fc.tiny_image())
    assert [layer.name for layer in layers] == ["conv", "relu", "pool"]
    assert all(layer.shape is None for layer in layers)


@pytest.mark.parametrize("meta", ['{"size": [100000, 100000]}', '{"crop_fraction": 1e-300}'])
def test_huge_preprocessing_size_is_an_input_error(meta: str) -> None:
    model = _with_meta("featviz.preprocess", meta)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    with fc.guarded(30, _GIB), api.Inspector(model, "cpu") as inspector, \
            pytest.raises(InputError, match="pixels"):
        inspector.predict(fc.tiny_image())


def test_predict_without_graph_output_is_a_model_error() -> None:
    model = fc.conv_classifier()
    del model.graph.output[:]
    with api.Inspector(model, "cpu") as inspector, pytest.raises(ModelError, match="no graph"):
        inspector.predict(fc.tiny_image())


def _special(kind: str, path: Path) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    elif kind == "loop":
        os.symlink(path, path)
    return path


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "socket", "loop"])
def test_special_files_are_refused_at_once(kind: str, case_dir: Path) -> None:
    """/dev/zero used to be read forever and a FIFO to block; every loader refuses at once."""
    loaders: list[tuple[str, Callable[[Path], object], type[FeatvizError]]] = [
        ("model.onnx", model_files.load_model, ModelError),
        ("image.png", fileio.load_image, InputError),
        ("batch.npy", fileio.load_array_file, InputError),
        ("labels.txt", api.read_labels, InputError),
        ("notes.txt", fileio.read_text, InputError),
        ("list.png", fileio.list_images, InputError),
    ]
    for name, load, error in loaders:
        path = _special(kind, case_dir / name)
        if kind == "dev-zero" and load is fileio.load_array_file:
            path = case_dir / "zero.npy"
            os.symlink("/dev/zero", path)
        with fc.guarded(10, _GIB), pytest.raises(error, match="not a regular file|not exist"):
            load(path)
    with fc.guarded(10, _GIB):
        result = run("info", _special(kind, case_dir / "cli.onnx"))
    assert result.exit_code == 1 and "regular file" in result.output


def _npy(shape: str, payload: bytes = b"\0" * 16) -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


@pytest.mark.parametrize("shape", ["(1000000000000,)", "(4611686018427387904,)",
                                   "(1000000, 1000000)"])
def test_array_header_declaring_terabytes_is_an_input_error(shape: str, case_dir: Path) -> None:
    path = case_dir / "big.npy"
    path.write_bytes(_npy(shape))
    with fc.guarded(30, _GIB), pytest.raises(InputError, match="declares shape"):
        fileio.load_array_file(path)
    path = case_dir / "big.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.npy", _npy(shape))
    with fc.guarded(30, _GIB), pytest.raises(InputError, match="declares shape"):
        fileio.load_array_file(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_array_header_length_of_4_gib_is_an_input_error(suffix: str, case_dir: Path) -> None:
    """A version-2 header declaring 0xFFFFFFF0 header bytes made numpy allocate 4 GiB (fuzz
    case chunks:batch.npy 8002)."""
    data = b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{}" * 8
    path = case_dir / f"long{suffix}"
    if suffix == ".npy":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.npy", data)
    with fc.guarded(30, _GIB), pytest.raises(InputError, match="4294967280-byte header"):
        fileio.load_array_file(path)


def test_array_header_that_does_not_tokenize_is_an_input_error(case_dir: Path) -> None:
    path = case_dir / "bad.npy"
    path.write_bytes(_npy("(1, '''"))
    with pytest.raises(InputError, match="cannot read array file"):
        fileio.load_array_file(path)


@pytest.mark.parametrize(("width", "height"), [(60000, 60000), (20000, 20000)])
def test_png_declaring_a_huge_size_is_an_input_error(width: int, height: int,
                                                     case_dir: Path) -> None:
    """A 100-byte PNG declaring 3.6 gigapixels is refused before decoding."""
    path = case_dir / "bomb.png"
    path.write_bytes(fi.png_bomb(width, height))
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (width, height)
    with fc.guarded(30, _GIB), pytest.raises(InputError, match="too large to decode"):
        fileio.load_image(path)


@pytest.mark.parametrize(("width", "height"), [(80000, 1), (1, 80000)])
def test_png_declaring_a_long_strip_loads_or_is_an_input_error(width: int, height: int,
                                                                case_dir: Path) -> None:
    """80000x1 is under the pixel limit: Pillow decodes what the short data holds."""
    path = case_dir / "strip.png"
    path.write_bytes(fi.png_bomb(width, height))
    with fc.guarded(30, _GIB):
        try:
            image = fileio.load_image(path)
        except InputError as err:
            assert str(path) in str(err)
        else:
            assert image.size == (width, height)


def test_fuzz_tool_reports_no_failure_on_a_short_run(tmp_path: Path) -> None:
    """``tools/fuzz.py`` runs its child, writes the report, and finds nothing in 8 cases."""
    from tools import fuzz

    args = fuzz.parse_args(["--minutes", "1", "--max-cases", "8", "--out", str(tmp_path),
                            "--batch", "4"])
    report_run = fuzz.fuzz_target(args, "image")
    report = json.loads((tmp_path / "image" / "report.json").read_text())
    assert report["cases"] == report_run.cases == 8
    assert report["outcomes"]["traceback"] == report["outcomes"]["hang"] == 0
    assert sum(report["outcomes"].values()) == report["cases"]


def test_crop_of_a_tall_strip_input_is_an_input_error() -> None:
    """Input 80000x1 (under the pixel limit) once made the crop's cover resize of a 6x5 image
    allocate 6e9 pixels (fuzz case proto:conv:dim+drop+dim)."""
    model = _with_meta("featviz.preprocess", '{"resize": "crop", "channel_order": "GRAY"}')
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 80000, 1
    with fc.guarded(30, _GIB), api.Inspector(model, "cpu") as inspector, \
            pytest.raises(InputError, match="pixels"):
        inspector.predict(fc.tiny_image())


def test_external_location_with_a_trailing_slash_is_a_model_error(case_dir: Path) -> None:
    """onnx refuses ``weights.bin/`` with its own ValidationError, which is now wrapped."""
    with pytest.raises(ModelError, match="external data"):
        model_files.load_model(_external(case_dir, "weights.bin/"))
