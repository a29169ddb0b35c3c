"""Train the small MNIST CNN of the PyTorch tutorial (seeded, CPU) and export it to ONNX.

    python tools/train_mnist.py --data ../shared/data/mnist --out models/mnist_cnn.onnx \\
        --epochs 6 --seed 0

Reads the gzip IDX files itself, holds out the last 5000 training images for validation, trains
with Adam, prints train/val/test accuracy per epoch (progress bar on stderr), exports
``models/mnist_cnn.onnx`` with nodes ``conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc1,
relu3, fc2`` (logits, no softmax), a dynamic batch axis and the ``mnist`` preprocessing metadata,
and writes one test image per class to ``models/samples/digit_<k>.png``.

torch is the optional ``train`` extra; the package ``onnx_featviz`` never imports this file.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import nn

if __package__ in (None, ""):  # run as a script: make `tools` and `onnx_featviz` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.export_torch import export_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
DEFAULT_OUT = REPO / "models" / "mnist_cnn.onnx"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
VAL_SIZE = 5000
#: The ``mnist`` preset: gray, pixels / 255 -> [0, 1], no mean/std, stretched to 28x28.
PREPROCESS = {
    "preset": "mnist", "channel_order": "GRAY", "scale": 1.0 / 255.0, "mean": [0.0],
    "std": [1.0], "resize": "stretch", "size": [28, 28], "layout": "NCHW",
}
LABELS = [str(digit) for digit in range(10)]


@dataclass(frozen=True)
class Mnist:
    """MNIST as uint8 arrays: images ``(N, 28, 28)`` (0 background, 255 ink), labels ``(N,)``."""

    train_images: NDArray[np.uint8]
    train_labels: NDArray[np.uint8]
    val_images: NDArray[np.uint8]
    val_labels: NDArray[np.uint8]
    test_images: NDArray[np.uint8]
    test_labels: NDArray[np.uint8]


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters.

    The learning rate is multiplied by ``lr_decay`` after each epoch (as the PyTorch MNIST
    example's StepLR); ``max_steps`` stops early (quick runs), ``None`` runs all epochs.
    """

    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    max_steps: int | None = None
    lr_decay: float = 0.7


def load_idx(path: str | Path) -> NDArray[np.uint8]:
    """Read an MNIST IDX file (gzip or raw) into ``(N, rows, cols)`` images or ``(N,)`` labels.

    Raises:
        FileNotFoundError: the file is missing (the message says where MNIST is expected).
        ValueError: bad magic number or a payload size that does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST file {path} not found; pass the folder holding the four *-ubyte.gz files "
            f"(default {DEFAULT_DATA}, see ../shared/data/README.md)"
        )
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path} is {len(raw)} bytes, too short for an IDX header; re-copy it")
    magic, count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic == IMAGES_MAGIC and len(raw) >= 16:
        shape: tuple[int, ...] = (count, int.from_bytes(raw[8:12], "big"),
                                  int.from_bytes(raw[12:16], "big"))
        offset = 16
    elif magic == LABELS_MAGIC:
        shape, offset = (count,), 8
    else:
        raise ValueError(
            f"{path} has IDX magic {magic}; expected {IMAGES_MAGIC} (images) or "
            f"{LABELS_MAGIC} (labels): is it an MNIST file?"
        )
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path} holds {len(raw) - offset} data bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt, re-copy it"
        )
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def load_mnist(data_dir: str | Path, *, val_size: int = VAL_SIZE) -> Mnist:
    """Load the four MNIST files; the last ``val_size`` training images become validation."""
    arrays = {key: load_idx(Path(data_dir) / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels; re-copy")
    cut = len(arrays["train_images"]) - val_size
    return Mnist(
        train_images=arrays["train_images"][:cut], train_labels=arrays["train_labels"][:cut],
        val_images=arrays["train_images"][cut:], val_labels=arrays["train_labels"][cut:],
        test_images=arrays["test_images"], test_labels=arrays["test_labels"],
    )


def build_model(*, seed: int = 0) -> nn.Module:
    """The tutorial CNN: (N, 1, 28, 28) in [0, 1] -> (N, 10) logits; ~114k parameters.

    conv1 5x5 1->16 (pad 2), relu1, pool1 2x2 -> 16x14x14; conv2 5x5 16->32, relu2, pool2 ->
    32x7x7; flatten; fc1 1568->64, relu3; fc2 64->10. Weights are initialized from ``seed``
    without touching torch's global random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 16, kernel_size=5, padding=2)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(16, 32, kernel_size=5, padding=2)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(32 * 7 * 7, 64)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(64, 10)),
        ]))


def to_tensor(images: NDArray[np.uint8]) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in [0, 1] (the ``mnist`` preset)."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def batches(count: int, batch_size: int, rng: np.random.Generator) -> Iterator[NDArray[np.intp]]:
    """Yield shuffled index batches covering ``range(count)`` once (last batch may be short)."""
    order = rng.permutation(count)
    for start in range(0, count, batch_size):
        yield order[start:start + batch_size]


def train(
    model: nn.Module,
    images: NDArray[np.uint8],
    labels: NDArray[np.uint8],
    config: TrainConfig,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy; return it (in eval mode).

    The batch order comes from ``np.random.default_rng(config.seed)``; with the same torch
    thread count two runs give identical weights. ``on_epoch(epoch, loss, running_accuracy)``
    is called after each epoch (1-based).
    """
    x, y = to_tensor(images), torch.from_numpy(labels.astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_decay)
    loss_fn = nn.CrossEntropyLoss()
    rng, step = np.random.default_rng(config.seed), 0
    total = -(-len(x) // config.batch_size)
    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for index, batch in enumerate(batches(len(x), config.batch_size, rng)):
            optimizer.zero_grad()
            logits = model(x[batch])
            loss = loss_fn(logits, y[batch])
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y[batch]).sum())
            seen, step = seen + len(batch), step + 1
            if progress:
                _bar(epoch, index + 1, total, loss_sum / seen, correct / seen)
            if config.max_steps is not None and step >= config.max_steps:
                break
        schedule.step()
        if progress:
            sys.stderr.write("\n")
        if on_epoch is not None:
            on_epoch(epoch, loss_sum / seen, correct / seen)
        if config.max_steps is not None and step >= config.max_steps:
            break
    return model.eval()


def _bar(epoch: int, done: int, total: int, loss: float, accuracy: float) -> None:
    """Redraw a one-line text progress bar on stderr (about 100 updates per epoch)."""
    if done != total and done % max(1, total // 100):
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(
        f"\repoch {epoch} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"loss {loss:.4f} acc {100 * accuracy:.2f}%"
    )
    sys.stderr.flush()


@torch.no_grad()
def predict(
    model: nn.Module, images: NDArray[np.uint8], *, batch_size: int = 1000
) -> NDArray[np.int64]:
    """Class ids ``(N,)`` for uint8 images ``(N, 28, 28)``; the model is put in eval mode."""
    model.eval()
    x = to_tensor(images)
    parts = [model(x[start:start + batch_size]).argmax(1) for start in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy()


def evaluate(model: nn.Module, images: NDArray[np.uint8], labels: NDArray[np.uint8]) -> float:
    """Accuracy in [0, 1] of ``model`` on uint8 images ``(N, 28, 28)`` and labels ``(N,)``."""
    return float((predict(model, images) == labels).mean())


def first_of_each_class(labels: NDArray[np.uint8]) -> list[int]:
    """Index of the first example of each digit 0..9 in ``labels``."""
    return [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]


def save_samples(images: NDArray[np.uint8], labels: NDArray[np.uint8], folder: Path) -> list[int]:
    """Write ``digit_<k>.png`` (28x28 gray, white on black) for the first image of each class.

    Returns:
        The test-set index of each digit 0..9.
    """
    folder.mkdir(parents=True, exist_ok=True)
    indices = first_of_each_class(labels)
    for digit, index in enumerate(indices):
        image = Image.fromarray(np.ascontiguousarray(images[index]))  # uint8 2-D -> mode "L"
        image.save(folder / f"digit_{digit}.png", optimize=True)
    return indices


def seed_everything(seed: int, threads: int) -> None:
    """Fix torch's seed and thread count and ask for deterministic kernels (CPU: cheap)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="ONNX file to write")
    parser.add_argument("--samples", type=Path, default=None,
                        help="folder for digit_<k>.png (default: <out folder>/samples)")
    parser.add_argument("--no-samples", action="store_true", help="do not write sample PNGs")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--lr-decay", type=float, default=TrainConfig.lr_decay,
                        help="learning-rate factor applied after each epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None, help="train on the first N images")
    parser.add_argument("--steps", type=int, default=None, help="stop after N optimizer steps")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "threads", "subset", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train, report per-epoch accuracy on stdout, export the model and the sample digits."""
    args = parse_args(argv)
    seed_everything(args.seed, args.threads)
    try:
        data = load_mnist(args.data)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    images, labels = data.train_images[:args.subset], data.train_labels[:args.subset]
    model = build_model(seed=args.seed)
    config = TrainConfig(args.epochs, args.batch_size, args.lr, args.seed, args.steps,
                         args.lr_decay)
    started = time.perf_counter()

    def report(epoch: int, loss: float, running: float) -> None:
        val = evaluate(model, data.val_images, data.val_labels)
        test = evaluate(model, data.test_images, data.test_labels)
        print(f"epoch {epoch}: loss {loss:.4f} train(running) {100 * running:.2f}% "
              f"val {100 * val:.2f}% test {100 * test:.2f}% "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    train(model, images, labels, config, on_epoch=report, progress=True)
    final = {name: evaluate(model, *pair) for name, pair in (
        ("train", (images, labels)), ("val", (data.val_images, data.val_labels)),
        ("test", (data.test_images, data.test_labels)))}
    print("final: " + " ".join(f"{k} {100 * v:.2f}%" for k, v in final.items()), flush=True)
    path = export_module(model, torch.zeros(1, 1, 28, 28), args.out,
                         preprocess=PREPROCESS, labels=LABELS)
    print(f"wrote {path}")
    if not args.no_samples:
        folder = args.samples or args.out.parent / "samples"
        indices = save_samples(data.test_images, data.test_labels, folder)
        print(f"wrote {folder}/digit_0..9.png from test indices {indices}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
