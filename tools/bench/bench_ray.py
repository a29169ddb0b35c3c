"""Benchmark the ``ray`` engine of ``featviz stats`` / ``compare`` (issue 17) against the local one.

Run from the repo root: ``python tools/bench/bench_ray.py [--reps 2]`` (needs ``ray[data]``).

Rows (one table of ratios, best of ``reps``, the two engines alternated so that load on the
machine hits both alike; 2 workers of the ray engine):

- warm cluster: Ray in local mode started before timing (``ray.init(num_cpus=2)`` once, as a
  cluster started with ``ray start --head`` and used with ``--ray-address auto``); timed from
  the call to the result, so the actors' start (a new worker process each, importing onnx /
  onnxruntime and opening its sessions; for image folders Ray Data's executor and actor pool)
  is included; the seconds until the first work unit came back are printed per run:
  - ``stats`` over the first 10 000 MNIST test images (IDX) with the bundled MNIST CNN, batch 64
    and over the 60 000 training
    images (one run each: the fixed cost of Ray against more work);
  - ``stats`` over 512 photos (the shared images, cropped and resized to 160-400 px, PNG) with
    SqueezeNet 1.1 (Caffe2, float16, ``../shared/data/models``), batch 32, read by Ray's file
    reader;
- cold: the MNIST case in a fresh process where the engine starts Ray itself (``ray.init``
  and its shutdown included), against the best local time;
- driver peak RSS of ``stats --engine ray`` over 10 000 MNIST images vs 1 000, each in a fresh
  process (``VmHWM`` of the driver alone: the actors are other processes).

Targets: ray >= 0.7x local on this 2-core machine (where Ray can only add overhead); peak RSS
10 000 vs 1 000 <= 1.1x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from onnx_featviz.audit import compare as audit_compare  # noqa: E402
from onnx_featviz.audit import stats as audit_stats  # noqa: E402
from onnx_featviz.structs import Progress  # noqa: E402
from tools.bench.bench_audit_stats import MNIST_MODEL, mnist_idx, peak_rss  # noqa: E402

SQUEEZENET = REPO.parent / "shared" / "data" / "models" / "squeezenet1.1_caffe2_fp16.onnx"
IMAGES = REPO.parent / "shared" / "data" / "images"
MNIST_TRAIN = REPO.parent / "shared" / "data" / "mnist" / "train-images-idx3-ubyte.gz"
Row = tuple[str, str, float, float, float, str, bool | str]


def photo_folder(folder: Path, count: int) -> Path:
    """``count`` PNG photos: crops of the shared images resized to 160-400 px (seeded)."""
    sources = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("*.*"))]
    rng = np.random.default_rng(0)
    out = folder / "photos"
    out.mkdir()
    for index in range(count):
        image = sources[index % len(sources)]
        w, h = image.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = image.crop((left, top, left + w * 3 // 4, top + h * 3 // 4))
        side = int(rng.integers(160, 400))
        crop.resize((side, side * 3 // 4)).save(out / f"photo_{index:04d}.png")
    return out


def run_once(model: Path, data: Path, batch: int, engine: str) -> tuple[float, float, int]:
    """Return (total seconds, seconds to the first progress call, images) of one run."""
    options = audit_stats.StatsOptions(provider="cpu", batch_size=batch, engine=engine,
                                       ray=audit_compare.RayOptions(workers=2))
    first: list[float] = []
    start = time.perf_counter()

    def mark(progress: Progress) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    result = audit_stats.dataset_stats(model, data, options, progress=mark)
    return time.perf_counter() - start, first[0], result.images


def compare_rows(tag: str, model: Path, data: Path, batch: int, reps: int,
                 cold: bool = False) -> list[Row]:
    """End-to-end throughput rows, ray (warm cluster) vs local, best of ``reps`` alternated;
    with ``cold``, also ray in a fresh process that starts Ray itself."""
    best = {"local": float("inf"), "ray": float("inf")}
    images = 0
    for _ in range(reps):
        for engine in best:
            total, first, images = run_once(model, data, batch, engine)
            best[engine] = min(best[engine], total)
            print(f"  {tag} {engine}: {total:.2f} s (first progress after {first:.2f} s)",
                  flush=True)
    local_rate = images / best["local"]
    rate = images / best["ray"]
    rows: list[Row] = [(tag, f"warm cluster, images/s ({images} images)", rate, local_rate,
                        rate / local_rate, ">= 0.70", rate >= 0.7 * local_rate)]
    if cold:
        cmd = [sys.executable, __file__, "--child-cold", str(model), str(data), str(batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        print(f"  {tag} ray cold: {found['seconds']:.2f} s (ray.init {found['init']:.2f} s)",
              flush=True)
        cold_rate = found["images"] / found["seconds"]
        rows.append((tag, f"cold (ray.init included), images/s ({images} images)", cold_rate,
                     local_rate, cold_rate / local_rate, ">= 0.70", cold_rate >= 0.7 * local_rate))
    return rows


def _cold_child(model: str, data: str, batch: int) -> None:
    """In a child process without Ray: one ray-engine run that starts Ray; print its times."""
    import ray

    os.environ["PYTHONPATH"] = str(REPO)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - start
    options = audit_stats.StatsOptions(batch_size=batch, engine="ray")
    result = audit_stats.dataset_stats(Path(model), data, options)
    ray.shutdown()
    print(json.dumps({"seconds": time.perf_counter() - start, "init": init,
                      "images": result.images}))


def start_ray() -> None:
    """Ray in local mode, 2 CPUs; its workers (started with it) import this checkout."""
    import ray

    os.environ["PYTHONPATH"] = str(REPO)  # inherited by the raylet and its pooled workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def _peak_child(data: str) -> None:
    """In a child process: ``stats --engine ray`` over DATA; print the driver's peak RSS."""
    import ray

    start_ray()
    options = audit_stats.StatsOptions(batch_size=64, engine="ray")
    result = audit_stats.dataset_stats(MNIST_MODEL, data, options)
    print(json.dumps({"peak": peak_rss(), "images": result.images}))
    ray.shutdown()


def memory_row(folder: Path) -> Row:
    peaks = {}
    for count in (1000, 10000):
        cmd = [sys.executable, __file__, "--child-peak", str(mnist_idx(folder, count))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        assert found["images"] == count, found
        peaks[count] = found["peak"] / 2**20
    ratio = peaks[10000] / peaks[1000]
    return ("MNIST CNN ray", "driver peak RSS, 10 000 vs 1 000 images (batch 64)",
            peaks[10000], peaks[1000], ratio, "<= 1.10", ratio <= 1.10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument("--child-peak", help=argparse.SUPPRESS)
    parser.add_argument("--child-cold", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_peak:
        _peak_child(args.child_peak)
        return
    if args.child_cold:
        _cold_child(args.child_cold[0], args.child_cold[1], int(args.child_cold[2]))
        return
    import ray

    print(f"load average at the start: {os.getloadavg()}", flush=True)
    start_ray()
    rows: list[Row] = []
    steps: list[Callable[[Path], list[Row]]] = [
        lambda f: compare_rows("MNIST CNN b64", MNIST_MODEL, mnist_idx(f, 10000), 64,
                               args.reps, cold=True),
        lambda f: compare_rows("MNIST CNN b64", MNIST_MODEL, MNIST_TRAIN, 64, 1)
        if MNIST_TRAIN.exists() else [],
        lambda f: compare_rows("SqueezeNet fp16 b32", SQUEEZENET,
                               photo_folder(f, args.photos), 32, args.reps),
    ]
    with tempfile.TemporaryDirectory(prefix="featviz-bench-ray-") as tmp:
        for step in steps:
            rows += step(Path(tmp))
        ray.shutdown()
        rows.append(memory_row(Path(tmp)))
    print(f"load average at the end: {os.getloadavg()}", flush=True)
    print(" | ".join(("network", "case", "ray", "local", "ratio", "target", "pass")))
    for net, case, this, base, ratio, target, ok in rows:
        unit = "MiB" if "RSS" in case else "img/s"
        print(f"{net} | {case} | {this:.1f} {unit} | {base:.1f} {unit} | {ratio:.3f} | "
              f"{target} | {ok}")


if __name__ == "__main__":
    main()
