"""Benchmark the core engine (issue 2): capture of every conv output, on-device statistics, memory.

Run from the repo root: ``python tools/bench/bench_engine.py [--depth 18] [--batch 8] [--reps 5]``.
On a machine where CUDA runs it measures ResNet-50, batch 32 on CUDA by default as well.
Prints one table of ratios (this vs a baseline measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from onnx_featviz import api, runtime  # noqa: E402
from tools.bench.nets import export_onnx, resnet  # noqa: E402
from tools.bench.timing import best_of  # noqa: E402


def torch_hooks_time(net: object, batch: np.ndarray, reps: int, device: str) -> float:
    """Time the tutorial way: forward hooks on every Conv2d, each output moved with .cpu()."""
    import torch

    model = net.to(device)  # type: ignore[attr-defined]
    captured: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(
                lambda m, i, o, n=name: captured.__setitem__(n, o.detach().cpu()))
    x = torch.from_numpy(batch).to(device)

    def run() -> None:
        with torch.no_grad():
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()

    return best_of(run, reps)


def pinned_bandwidth() -> float:
    """Return pinned device-to-host bandwidth in bytes/s (torch, CUDA only)."""
    import torch

    src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty(src.shape, dtype=torch.uint8, pin_memory=True)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * src.numel() / (time.perf_counter() - start)


def measure(depth: int, batch_size: int, provider: str, reps: int) -> list[tuple]:
    """Return table rows for one network/provider."""
    net = resnet(depth)
    model_bytes = export_onnx(net, (1, 3, 224, 224))
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, 224, 224), np.float32)
    rows: list[tuple] = []
    with api.Inspector(model_bytes, provider, max_batch=None) as insp:
        tensors = insp.layer_tensors(None, "conv")
        plain_session = insp.session()
        feed = {insp.spec.name: batch}
        plain = best_of(lambda: plain_session.run(feed), reps)
        capture = best_of(lambda: insp.activations(batch, None, stage="conv"), reps)
        stats = best_of(lambda: insp.stats(batch, None), reps)
        nbytes = sum(v.nbytes for v in insp.activations(batch[:1]).values()) * batch_size
    device = "cuda" if provider == "cuda" else "cpu"
    hooks = torch_hooks_time(net, batch, reps, device)
    tag = f"ResNet-{depth} b{batch_size} {provider}"
    rows.append((tag, "plain inference", plain, plain, 1.0, "", ""))
    if provider == "cuda":
        floor = plain + nbytes / pinned_bandwidth()
        rows.append((tag, f"capture {len(tensors)} convs ({nbytes / 2**20:.0f} MiB) vs floor",
                     capture, floor, capture / floor, "<= 1.25", capture / floor <= 1.25))
        with api.Inspector(model_bytes, provider, max_batch=None, transfer="float16") as half:
            fast = best_of(lambda: half.activations(batch, None, stage="conv"), reps)
        rows.append((tag, "capture, float16 transfer vs float32 floor", fast, floor,
                     fast / floor, "(info)", ""))
    else:
        rows.append((tag, f"capture {len(tensors)} convs ({nbytes / 2**20:.0f} MiB) vs plain",
                     capture, plain, capture / plain, "<= 1.10", capture / plain <= 1.10))
    rows.append((tag, "torch hooks+.cpu() vs capture", hooks, capture, hooks / capture,
                 ">= 1.40", hooks / capture >= 1.4))
    rows.append((tag, "stats of all convs vs plain", stats, plain, stats / plain, "<= 1.25",
                 stats / plain <= 1.25))
    return rows


class RssPeak:
    """Sample this process's resident memory every millisecond; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    """Return the resident set size of this process in bytes (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_child(model_path: str, batch_size: int, max_bytes: int) -> None:
    """In a child process: print peak RSS growth of a streamed capture over its starting RSS.

    The baseline is the process after plain inference on the whole batch with the capture
    session already open, so the growth measured is what the capture adds: the exposed outputs
    onnxruntime allocates in a pass and the groups it yields (consumed and dropped).
    """
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, 224, 224), np.float32)
    with api.Inspector(Path(model_path), "cpu", max_batch=None) as insp:
        tensors = insp.layer_tensors(None, "conv")
        session = insp.session(tuple(tensors))  # opened before the baseline: weights count there
        for _ in range(2):  # the inference footprint at this batch is the baseline
            session.run({insp.spec.name: batch[:1]}, [tensors[-1]])
            insp.session().run({insp.spec.name: batch})
        base = rss()
        total = 0
        with RssPeak() as peak:
            for _, group in insp.stream(batch, tensors, max_bytes=max_bytes):
                total += sum(int(v.nbytes) for v in group.values())
    print(json.dumps({"growth": peak.peak - base, "total": total}))


def memory_row(depth: int, batch_size: int, max_bytes: int) -> tuple:
    """Run ``_peak_child`` in a fresh process and return a table row."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        path.write_bytes(export_onnx(resnet(depth), (1, 3, 224, 224)))
        cmd = [sys.executable, __file__, "--child-peak", str(max_bytes), "--model", str(path),
               "--batch", str(batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    growth, total = result["growth"], result["total"]
    return (f"ResNet-{depth} b{batch_size} cpu",
            f"peak RSS growth, streamed {total / 2**20:.0f} MiB, max_bytes "
            f"{max_bytes / 2**20:.0f} MiB", growth / 2**20, max_bytes / 2**20,
            growth / max_bytes, "<= 1.00", growth <= max_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-bytes", type=int, default=64 * 2**20)
    parser.add_argument("--child-peak", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_peak:
        _peak_child(args.model, args.batch, args.child_peak)
        return
    rows = measure(args.depth, args.batch, "cpu", args.reps)
    rows.append(memory_row(args.depth, args.batch, args.max_bytes))
    if runtime.cuda_runs():
        rows += measure(50, 32, "cuda", args.reps)
    header = ("network", "case", "this", "baseline", "ratio", "target", "pass")
    print(" | ".join(header))
    for net, case, this, base, ratio, target, ok in rows:
        unit = "MiB" if "RSS" in case else "s"
        print(f"{net} | {case} | {this:.4f} {unit} | {base:.4f} {unit} | {ratio:.2f} | "
              f"{target} | {ok}")


if __name__ == "__main__":
    main()
