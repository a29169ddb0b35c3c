"""Benchmark ``featviz compare`` memory: peak host RSS over 10 000 vs 1 000 MNIST test images.

Run from the repo root: ``python tools/bench/bench_audit_compare.py [--data ../shared/data/mnist]``.
The MNIST CNN (``models/mnist_cnn.onnx``) is compared with its float16 form (onnxconverter-common,
I/O kept float32) and with its int8 QDQ form (onnxruntime.quantization, calibrated on 200 training
images). Each run is the real command line (``python -m onnx_featviz compare ... --json``) in its
own process; its peak RSS comes from ``os.wait4`` (that child alone, so peaks stay separate).
Target (issue 5): peak(10 000) <= 1.1 x peak(1 000), i.e. memory does not grow with the dataset.
Prints one table of ratios.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests import graphs  # noqa: E402

TARGET = 1.1


def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` images of a gzip IDX images file as (count, 28, 28) uint8."""
    with gzip.open(path, "rb") as fh:
        _, total, rows, cols = struct.unpack(">IIII", fh.read(16))
        count = min(count, total)
        return np.frombuffer(fh.read(count * rows * cols), np.uint8).reshape(count, rows, cols)


def write_idx(path: Path, pixels: np.ndarray) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, *pixels.shape))
        fh.write(pixels.tobytes())
    return path


def make_models(work: Path, mnist: Path) -> dict[str, Path]:
    """Write the fp16 and int8 QDQ forms of the MNIST CNN; return name -> path."""
    from onnxconverter_common import float16

    model = onnx.load(REPO / "models" / "mnist_cnn.onnx")
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    half.ir_version = model.ir_version
    calib = (read_idx(mnist / "train-images-idx3-ubyte.gz", 200).astype(np.float32)
             / 255.0)[:, None]
    paths = {"fp16": work / "mnist_fp16.onnx", "int8 QDQ": work / "mnist_qdq.onnx"}
    onnx.save_model(half, paths["fp16"])
    onnx.save_model(graphs.qdq_model(model, calib), paths["int8 QDQ"])
    return paths


def run_compare(model_b: Path, data: Path, out: Path) -> tuple[int, float, dict[str, object]]:
    """Run the compare command in a child; return (peak RSS bytes, seconds, JSON report)."""
    cmd = [sys.executable, "-m", "onnx_featviz", "compare", str(REPO / "models" / "mnist_cnn.onnx"),
           str(model_b), str(data), "--provider-a", "cpu", "--provider-b", "cpu",
           "--json", str(out)]
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode not in (0, 1):
            log.seek(0)
            raise RuntimeError(f"compare failed ({child.returncode}): {log.read().decode()}")
    report = json.loads(out.read_text())
    return usage.ru_maxrss * 1024, seconds, report  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder with the MNIST IDX .gz files")
    parser.add_argument("--small", type=int, default=1000)
    args = parser.parse_args()
    full = args.data / "t10k-images-idx3-ubyte.gz"
    mib = 2.0**20
    rows = []
    with tempfile.TemporaryDirectory(prefix="featviz-bench-") as tmp:
        work = Path(tmp)
        models = make_models(work, args.data)
        small = write_idx(work / f"t{args.small}-images-idx3-ubyte.gz",
                          read_idx(full, args.small))
        for name, path in models.items():
            peaks = {}
            for data in (small, full):
                peak, seconds, report = run_compare(path, data, work / "report.json")
                images = int(report["images"])  # type: ignore[call-overload]
                peaks[images] = peak
                print(f"  {name}: {images} images, peak RSS {peak / mib:.1f} MiB, "
                      f"{seconds:.1f} s ({images / seconds:.0f} images/s incl. start-up), "
                      f"passed={report['passed']}", file=sys.stderr)
            (n_small, p_small), (n_full, p_full) = sorted(peaks.items())
            rows.append((name, n_small, p_small, n_full, p_full))
    print("| compare float32 vs | images | peak RSS | baseline images | baseline peak RSS "
          "| ratio | target | pass |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n_small, p_small, n_full, p_full in rows:
        ratio = p_full / p_small
        print(f"| {name} | {n_full} | {p_full / mib:.1f} MiB | {n_small} | "
              f"{p_small / mib:.1f} MiB | {ratio:.3f} | <= {TARGET} | "
              f"{'yes' if ratio <= TARGET else 'NO'} |")


if __name__ == "__main__":
    main()
