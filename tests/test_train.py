"""Tests for tools/train_mnist.py, tools/export_torch.py and the committed models/mnist_cnn.onnx."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from onnx_featviz.structs import META_LABELS, META_PREPROCESS

torch = pytest.importorskip("torch")

from tools import train_mnist  # noqa: E402
from tools.export_torch import MAX_IR_VERSION, export_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MODEL = REPO / "models" / "mnist_cnn.onnx"
SAMPLES = REPO / "models" / "samples"
LAYERS = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]


def mnist_file(name: str) -> Path:
    """Path of one shared MNIST file; skip the test when ../shared/data is absent."""
    path = MNIST / name
    if not path.is_file():
        pytest.skip(f"MNIST file {name} not found under ../shared/data/mnist beside the repo")
    return path


def committed_model() -> onnx.ModelProto:
    """The committed models/mnist_cnn.onnx; skip when it has not been generated yet."""
    if not MODEL.is_file():
        pytest.skip("models/mnist_cnn.onnx is missing; run tools/train_mnist.py")
    return onnx.load(MODEL)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU onnxruntime session for ``model``."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture
def torch_cpu() -> Iterator[None]:
    """Run with 2 threads and deterministic kernels; restore torch's global settings after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


# --- load_idx -------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_idx_reads_shared_test_labels_and_images() -> None:
    labels = train_mnist.load_idx(mnist_file("t10k-labels-idx1-ubyte.gz"))
    images = train_mnist.load_idx(mnist_file("t10k-images-idx3-ubyte.gz"))
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels, minlength=10).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]
    assert images.min() == 0 and images.max() == 255


@pytest.mark.slow
def test_load_idx_reads_shared_train_labels() -> None:
    labels = train_mnist.load_idx(mnist_file("train-labels-idx1-ubyte.gz"))
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


def test_load_idx_round_trips_gzip_and_raw(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    gz = tmp_path / "images.gz"
    gz.write_bytes(gzip.compress(idx_bytes(2051, (2, 3, 4), pixels.tobytes())))
    raw = tmp_path / "labels-idx1-ubyte"
    raw.write_bytes(idx_bytes(2049, (3,), bytes([7, 2, 1])))
    np.testing.assert_array_equal(train_mnist.load_idx(gz), pixels)
    assert train_mnist.load_idx(raw).tolist() == [7, 2, 1]


def test_load_idx_rejects_missing_bad_magic_and_truncated(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        train_mnist.load_idx(tmp_path / "absent.gz")
    bad = tmp_path / "bad"
    bad.write_bytes(idx_bytes(1234, (1,), b"\x00"))
    with pytest.raises(ValueError, match="magic 1234"):
        train_mnist.load_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(2049, (5,), b"\x00\x01"))
    with pytest.raises(ValueError, match="truncated"):
        train_mnist.load_idx(short)


# --- training -------------------------------------------------------------------------------


def test_build_model_has_tutorial_layers_and_is_small() -> None:
    model = train_mnist.build_model(seed=0)
    assert [name for name, _ in model.named_children()] == LAYERS
    assert sum(p.numel() for p in model.parameters()) * 4 < 1_000_000
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.usefixtures("torch_cpu")
def test_short_training_reaches_sanity_accuracy() -> None:
    train_images = train_mnist.load_idx(mnist_file("train-images-idx3-ubyte.gz"))[:5000]
    train_labels = train_mnist.load_idx(mnist_file("train-labels-idx1-ubyte.gz"))[:5000]
    test_images = train_mnist.load_idx(mnist_file("t10k-images-idx3-ubyte.gz"))[:1000]
    test_labels = train_mnist.load_idx(mnist_file("t10k-labels-idx1-ubyte.gz"))[:1000]
    config = train_mnist.TrainConfig(epochs=10, batch_size=64, seed=0, max_steps=300)
    model = train_mnist.train(train_mnist.build_model(seed=0), train_images, train_labels, config)
    assert train_mnist.evaluate(model, test_images, test_labels) > 0.90


@pytest.mark.usefixtures("torch_cpu")
def test_training_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(256, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=256).astype(np.uint8)
    config = train_mnist.TrainConfig(epochs=1, batch_size=32, seed=0, max_steps=5)
    first = train_mnist.train(train_mnist.build_model(seed=0), images, labels, config)
    second = train_mnist.train(train_mnist.build_model(seed=0), images, labels, config)
    pairs = zip(first.state_dict().items(), second.state_dict().items(), strict=True)
    for (name, a), (_, b) in pairs:
        assert torch.equal(a, b), name
    assert not torch.equal(first.state_dict()["conv1.weight"],
                           train_mnist.build_model(seed=0).state_dict()["conv1.weight"])


# --- the committed model --------------------------------------------------------------------


@pytest.mark.slow
def test_committed_model_reaches_test_accuracy() -> None:
    model = committed_model()
    images = train_mnist.load_idx(mnist_file("t10k-images-idx3-ubyte.gz"))
    labels = train_mnist.load_idx(mnist_file("t10k-labels-idx1-ubyte.gz"))
    batch = (images.astype(np.float32) / 255.0)[:, None]
    (logits,) = session(model).run(["logits"], {"input": batch})
    assert logits.shape == (10000, 10)
    assert float((logits.argmax(1) == labels).mean()) >= 0.985


@pytest.mark.slow
def test_committed_model_structure_and_metadata() -> None:
    model = committed_model()
    onnx.checker.check_model(model)
    assert model.ir_version <= MAX_IR_VERSION
    assert MODEL.stat().st_size < 1_000_000
    assert [node.name for node in model.graph.node] == LAYERS
    assert [node.op_type for node in model.graph.node] == [
        "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"
    ]
    assert [node.output[0] for node in model.graph.node] == LAYERS[:-1] + ["logits"]
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "input" and graph_output.name == "logits"
    for value in (graph_input, graph_output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    meta = {prop.key: prop.value for prop in model.metadata_props}
    prep = json.loads(meta[META_PREPROCESS])
    assert prep["preset"] == "mnist" and prep["channel_order"] == "GRAY"
    assert prep["scale"] == pytest.approx(1 / 255) and prep["size"] == [28, 28]
    assert prep["mean"] == [0.0] and prep["std"] == [1.0] and prep["resize"] == "stretch"
    assert json.loads(meta[META_LABELS]) == [str(d) for d in range(10)]


@pytest.mark.slow
def test_samples_are_classified_as_their_digit() -> None:
    sess = session(committed_model())
    for digit in range(10):
        image = Image.open(SAMPLES / f"digit_{digit}.png")
        assert image.mode == "L" and image.size == (28, 28)
        pixels = np.asarray(image, dtype=np.float32)[None, None] / 255.0
        (logits,) = sess.run(["logits"], {"input": pixels})
        assert int(logits.argmax()) == digit, f"digit_{digit}.png"


@pytest.mark.slow
def test_samples_are_the_first_test_image_of_each_class() -> None:
    images = train_mnist.load_idx(mnist_file("t10k-images-idx3-ubyte.gz"))
    labels = train_mnist.load_idx(mnist_file("t10k-labels-idx1-ubyte.gz"))
    indices = train_mnist.first_of_each_class(labels)
    assert indices == [3, 2, 1, 18, 4, 8, 11, 0, 61, 7]
    for digit, index in enumerate(indices):
        np.testing.assert_array_equal(np.asarray(Image.open(SAMPLES / f"digit_{digit}.png")),
                                      images[index])


# --- export_module --------------------------------------------------------------------------


class Block(torch.nn.Module):
    """conv -> relu, plus the block input (the Add is the block's own code)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv1(x)) + x


class Tiny(torch.nn.Module):
    """stem conv -> layer1 = Sequential(Block, Block) -> torch.flatten -> head Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 2, 3)
        self.layer1 = torch.nn.Sequential(Block(), Block())
        self.head = torch.nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.layer1(self.stem(x)), 1))


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return Tiny()


def test_export_module_names_layers_after_module_paths(tmp_path: Path) -> None:
    module = tiny()
    path = export_module(module, torch.zeros(1, 1, 6, 6), tmp_path / "sub" / "tiny.onnx",
                         preprocess={"preset": "unit", "size": [6, 6]}, labels=["a", "b", "c"])
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.ir_version <= MAX_IR_VERSION
    assert [node.name for node in model.graph.node] == [
        "stem", "layer1.0.conv1", "layer1.0.relu", "layer1.0/Add",
        "layer1.1.conv1", "layer1.1.relu", "layer1.1/Add", "Flatten", "head",
    ]
    for node in model.graph.node[:-1]:
        assert node.output[0] == node.name
    assert model.graph.node[-1].output[0] == "logits"
    assert model.graph.node[1].input[:2] == ["stem", "layer1.0.conv1.weight"]
    meta = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    assert meta == {META_PREPROCESS: {"preset": "unit", "size": [6, 6]},
                    META_LABELS: ["a", "b", "c"]}
    assert module.training, "the caller's module keeps its training flag"


def test_export_module_matches_torch_with_dynamic_batch(tmp_path: Path) -> None:
    module = tiny().eval()
    path = export_module(module, torch.zeros(1, 1, 6, 6), tmp_path / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6)).astype(np.float32)
    (got,) = session(onnx.load(path)).run(["logits"], {"input": x})
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"


def test_export_module_is_deterministic_and_optional_naming(tmp_path: Path) -> None:
    module = tiny().eval()
    first = export_module(module, torch.zeros(1, 1, 6, 6), tmp_path / "a.onnx")
    second = export_module(module, torch.zeros(1, 1, 6, 6), tmp_path / "b.onnx")
    assert first.read_bytes() == second.read_bytes()
    raw = onnx.load(export_module(module, torch.zeros(1, 1, 6, 6), tmp_path / "raw.onnx",
                                  layer_names=False, dynamic_batch=False))
    assert raw.graph.node[0].name == "/stem/Conv"
    assert raw.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert not raw.metadata_props
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "raw.onnx"]


def test_export_module_rejects_bad_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        export_module(tiny(), torch.zeros(1, 1, 6, 6), tmp_path / "x.onnx",
                      preprocess={"mena": [0.5]})
    with pytest.raises(ValueError, match="sequence of strings"):
        export_module(tiny(), torch.zeros(1, 1, 6, 6), tmp_path / "x.onnx", labels=[0, 1, 2])
    assert not list(tmp_path.iterdir())
