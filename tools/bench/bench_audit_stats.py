"""Benchmark ``featviz stats`` (issue 5): throughput vs plain inference, and constant host memory.

Run from the repo root: ``python tools/bench/bench_audit_stats.py [--reps 3]``.

Rows (one table of ratios, each against a baseline measured in the same run, best of ``reps``,
the two sides alternated so that load on the machine hits both alike):

- end to end: ``audit_stats.dataset_stats`` over DATA vs plain inference streamed over the same
  DATA (``api_data.open_data`` + the unmodified model), both reading and preprocessing DATA;
- device: ``Inspector.stats`` vs a plain ``session.run`` on the same in-memory batches (what the
  appended reductions cost on their own);
- peak host RSS of ``dataset_stats`` over the 10 000 MNIST test images vs over the first 1 000,
  each in a fresh process (``VmHWM``: interpreter, onnxruntime and model included).

Networks: the bundled MNIST CNN on the MNIST t10k images (``../shared/data/mnist``; random
digits of the same shape when absent) and ResNet-18 from ``tools/bench/nets.py`` (torchvision
layout, random seeded weights, BN folded) on random 224x224 inputs in a ``.npy``. Where CUDA
runs, ResNet-50 batch 32 is measured on CUDA as well. Stats use the ``convs`` layer set (each
conv layer's activation output). Throughput ratio = plain time / stats time; target >= 0.8.
End to end includes the one-off setup of each side (stats: layer catalog, graph rewrite and a
larger session, about 0.45 s for ResNet-18 here), hence 256 ResNet inputs by default.
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from onnx_featviz import api, runtime  # noqa: E402
from onnx_featviz.audit import stats as audit_stats  # noqa: E402
from onnx_featviz.io import data as api_data  # noqa: E402

MNIST_MODEL = REPO / "models" / "mnist_cnn.onnx"
MNIST_T10K = REPO.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
Row = tuple[str, str, float, float, float, str, bool | str]


def alternate_best(first: Callable[[], object], second: Callable[[], object], reps: int
                   ) -> tuple[float, float]:
    """Best wall time of each callable over ``reps`` alternating calls, after a warm-up."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(reps):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def mnist_idx(folder: Path, count: int) -> Path:
    """The first ``count`` t10k images as a gzip IDX file (random digits without the data)."""
    if MNIST_T10K.exists():
        raw = gzip.decompress(MNIST_T10K.read_bytes())
        pixels = np.frombuffer(raw, np.uint8, offset=16)[: count * 784]
    else:
        pixels = np.random.default_rng(0).integers(0, 256, count * 784, np.uint8)
    path = folder / f"mnist_{count}-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">IIII", 2051, count, 28, 28)
                                   + pixels.tobytes(), mtime=0))
    return path


def plain_stream(model: api.ModelSource, data: Path, provider: str, batch: int) -> int:
    """Plain inference over DATA, streamed as ``featviz stats`` streams it; returns images."""
    with api.Inspector(model, provider, max_batch=batch) as inspector:
        session = inspector.session()
        images = 0
        for part in api_data.open_data(inspector, data, batch_size=batch):
            session.run({inspector.spec.name: part.batch}, split=False)
            images += len(part.batch)
    return images


def throughput_rows(tag: str, model: api.ModelSource, data: Path, provider: str, batch: int,
                    reps: int) -> list[Row]:
    """End-to-end and device-only rows for one network / provider."""
    options = audit_stats.StatsOptions(provider=provider, batch_size=batch)
    t_plain, t_stats = alternate_best(lambda: plain_stream(model, data, provider, batch),
                                      lambda: audit_stats.dataset_stats(model, data, options),
                                      reps)
    rows: list[Row] = [(tag, "end to end: stats vs plain inference streamed over DATA",
                        t_stats, t_plain, t_plain / t_stats, ">= 0.80", t_plain / t_stats >= 0.8)]
    with api.Inspector(model, provider, max_batch=batch) as inspector:
        stream = api_data.open_data(inspector, data, batch_size=batch)
        batches = [part.batch for part in stream]
        tensors = audit_stats._stats_tensors(inspector.info, "convs")
        session, name = inspector.session(), inspector.spec.name

        def plain() -> None:
            for rows_ in batches:
                session.run({name: rows_}, split=False)

        def stats() -> None:
            for rows_ in batches:
                inspector.stats(rows_, tensors)

        d_plain, d_stats = alternate_best(plain, stats, reps)
    rows.append((tag, f"device: stats of {len(tensors)} tensors vs plain, in-memory batches",
                 d_stats, d_plain, d_plain / d_stats, ">= 0.80", d_plain / d_stats >= 0.8))
    return rows


def _peak_child(data: str, batch: int) -> None:
    """In a child process: run ``dataset_stats`` over DATA and print the peak RSS in bytes."""
    result = audit_stats.dataset_stats(MNIST_MODEL, data,
                                     audit_stats.StatsOptions(provider="cpu", batch_size=batch))
    print(json.dumps({"peak": peak_rss(), "images": result.images}))


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (Linux ``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over fork/exec from the parent (this benchmark).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def memory_row(folder: Path, batch: int) -> Row:
    """Peak RSS over 10 000 MNIST images vs 1 000, each in a fresh process."""
    peaks = {}
    for count in (1000, 10000):
        cmd = [sys.executable, __file__, "--child-peak", str(mnist_idx(folder, count)),
               "--mnist-batch", str(batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        assert found["images"] == count, found
        peaks[count] = found["peak"] / 2**20
    ratio = peaks[10000] / peaks[1000]
    return ("MNIST CNN cpu", f"peak RSS of stats, 10 000 vs 1 000 images (batch {batch})",
            peaks[10000], peaks[1000], ratio, "<= 1.10", ratio <= 1.10)


def resnet_data(folder: Path, depth: int, images: int) -> tuple[bytes, Path]:
    from tools.bench.nets import export_onnx, resnet

    model = export_onnx(resnet(depth), (1, 3, 224, 224))
    x = np.random.default_rng(0).standard_normal((images, 3, 224, 224)).astype(np.float32)
    path = folder / f"resnet_inputs_{images}.npy"
    np.save(path, x)
    return model, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mnist-batch", type=int, default=64)
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--resnet-images", type=int, default=256)
    parser.add_argument("--child-peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_peak:
        _peak_child(args.child_peak, args.mnist_batch)
        return
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="featviz-bench-") as tmp:
        folder = Path(tmp)
        mnist = mnist_idx(folder, 10000)
        rows += throughput_rows(f"MNIST CNN b{args.mnist_batch} cpu", MNIST_MODEL, mnist,
                                "cpu", args.mnist_batch, args.reps)
        model, inputs = resnet_data(folder, 18, args.resnet_images)
        rows += throughput_rows(f"ResNet-18 b{args.resnet_batch} cpu", model, inputs, "cpu",
                                args.resnet_batch, args.reps)
        rows.append(memory_row(folder, args.mnist_batch))
        if runtime.cuda_runs():
            rows += throughput_rows(f"MNIST CNN b{args.mnist_batch} cuda", MNIST_MODEL, mnist,
                                    "cuda", args.mnist_batch, args.reps)
            model, inputs = resnet_data(folder, 50, 128)
            rows += throughput_rows("ResNet-50 b32 cuda", model, inputs, "cuda", 32, args.reps)
    print(f"MNIST data: {MNIST_T10K if MNIST_T10K.exists() else 'random digits (t10k absent)'}")
    print(" | ".join(("network", "case", "this", "baseline", "ratio", "target", "pass")))
    for net, case, this, base, ratio, target, ok in rows:
        unit = "MiB" if "RSS" in case else "s"
        print(f"{net} | {case} | {this:.4f} {unit} | {base:.4f} {unit} | {ratio:.3f} | "
              f"{target} | {ok}")


if __name__ == "__main__":
    main()
