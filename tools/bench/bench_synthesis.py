"""Benchmark feature visualization (issue 6): one optimization step vs one forward pass.

Run from the repo root: ``python tools/bench/bench_synthesis.py [--batch 8] [--reps 5]``.

One step of ``maximize``'s fourier recipe = parameterization (irfft2, colour, sigmoid) + one
random jitter/scale/rotation + preprocessing map + ONE session call (forward to the layer, the
objective head, backward to the input) + the adjoints back to the spectrum + Adam. It is timed
against one plain forward pass of the same batch through the whole model (batch axis freed, as
the step's session has it), and through the model cut at the layer. Rows: SqueezeNet 1.1
(../shared/data, float16, Caffe preprocessing) at a mid and a deep layer, the MNIST CNN, and a
ResNet-18 exported from tools/bench/nets.py (float32; ``--no-resnet`` skips it), on CPU and,
where CUDA runs, on CUDA. Target: step <= 3.5 x forward.

``--full-run`` (default on where CUDA runs) times 64 channels of a SqueezeNet layer at 224x224
for 512 steps end to end. On CPU it runs a reduced configuration (``--cpu-steps`` steps) and
extrapolates to 512 steps.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from onnx_featviz import api, runtime  # noqa: E402
from onnx_featviz.graph import rewrite as rewrite  # noqa: E402
from onnx_featviz.synthesis import heads as synth_heads  # noqa: E402
from onnx_featviz.synthesis import maths as syn  # noqa: E402
from onnx_featviz.synthesis import optim as syn_optim  # noqa: E402
from onnx_featviz.synthesis import run as synth  # noqa: E402
from tools.bench.nets import export_onnx, resnet  # noqa: E402
from tools.bench.timing import best_of  # noqa: E402

SQUEEZENET = REPO.parent / "shared" / "data" / "models" / "squeezenet1.1_caffe2_fp16.onnx"
MNIST = REPO / "models" / "mnist_cnn.onnx"
RESNET_LAYER = "/layer3/layer3.1/relu_1/Relu"
TARGET = 3.5
BLOCK = 3


def free_batch(model: onnx.ModelProto, outputs: list[str] | None = None) -> onnx.ModelProto:
    """Copy ``model`` with a symbolic batch axis (and only ``outputs``, pruned) for baselines."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name not in inits and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.value_info[:]
    names = outputs or [o.name for o in graph.output]
    del graph.output[:]
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    rewrite.prune_graph(graph)
    return out


class Case:
    """One model, layer, batch and provider: forward baselines and the fourier step."""

    def __init__(self, model: Path | bytes, layer: str, batch: int, provider: str,
                 prep: api.PrepOptions | None) -> None:
        self.inspector = api.Inspector(model, provider, prep=prep)
        ins = self.inspector
        self.imap = syn.input_map(ins.spec, ins.preprocessing)
        self.size = synth._image_size(ins, None)
        self.tensor = synth._layer_tensor(ins, layer)
        shape = synth._layer_shape(ins, self.imap, self.tensor, self.size)
        opts = synth.MaximizeOptions(layer, channels=tuple(range(batch)))
        units = synth._units(opts, shape[0])
        head = synth_heads._Head("channel", shape[0])
        self.feeds = synth._Feeds(ins, self.imap, self.tensor, head, units)(self.size)
        self.grads = synth_heads._GradientSession(ins, self.tensor, head)
        self.run = synth._FourierRun(self.grads, (batch, self.imap.image_channels, *self.size),
                                     opts, np.random.default_rng(0))
        image = self.run.image()
        self.x = syn.to_model(self.imap, image).astype(ins.spec.dtype)
        self.full = runtime.Session(free_batch(ins.model), provider)
        self.cut = runtime.Session(free_batch(ins.model, [self.tensor]), provider)

    def close(self) -> None:
        for session in (self.full, self.cut):
            session.close()
        self.grads.close()
        self.inspector.close()

    def times(self, reps: int) -> dict[str, float]:
        """Best call over ``reps`` interleaved rounds of blocks (full forward, cut forward,
        step; ``BLOCK`` timed calls each after one warm-up call), so that load from other
        processes hits every case alike while each is timed in the steady state it has in use
        (512 steps back to back; a single call between other sessions' calls runs from cold
        caches). The step's session call is timed inside the step (its host share is the
        rest)."""
        name, grads = self.inspector.spec.name, self.grads
        inner = grads.run_model
        session: list[float] = []

        def timed(x: syn.F32, feeds: dict[str, syn.F32], *, unit: bool = False
                  ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], syn.F32]:
            start = time.perf_counter()
            try:
                return inner(x, feeds, unit=unit)
            finally:
                session.append(time.perf_counter() - start)

        grads.run_model = timed  # type: ignore[method-assign]
        rounds: dict[str, Callable[[], object]] = {"full": lambda: self.full.run({name: self.x}),
                  "cut": lambda: self.cut.run({name: self.x}),
                  "step": lambda: self.run.step(self.feeds)}
        best = {k: float("inf") for k in rounds}
        step_session = float("inf")
        for _ in range(reps):
            for key, fn in rounds.items():
                for call in range(BLOCK + 1):  # the first call of a block warms it up
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                    if call and key == "step" and elapsed < best["step"]:
                        step_session = session[-1]
                    if call:
                        best[key] = min(best[key], elapsed)
        grads.run_model = inner  # type: ignore[method-assign]
        return {**best, "session": step_session, **self.breakdown(reps)}

    def breakdown(self, reps: int) -> dict[str, float]:
        """Best time of each part of a step on one thread (the step runs the host parts on row
        chunks in a thread pool, so its host share is about their sum / cores)."""
        run, rng, hw = self.run, np.random.default_rng(1), self.size
        image = run.image()
        sampler = syn.random_sampler(rng, hw, hw)
        view = syn.sample(sampler, image)
        x = syn.to_model(self.imap, view)
        _, gx = self.grads.run_model(x, self.feeds)
        g = syn.sample_adjoint(sampler, syn.to_model_adjoint(self.imap, gx))
        gs = syn.fourier_vjp(run.param, image, g)
        spectrum = np.concatenate(run.spectra)
        state = syn_optim.adam_init(spectrum)
        parts = {
            "param": lambda: run.image(),
            "transform": lambda: syn.sample(syn.random_sampler(rng, hw, hw), image),
            "maps": lambda: (syn.to_model(self.imap, view),
                             syn.to_model_adjoint(self.imap, gx)),
            "adjoints": lambda: (syn.sample_adjoint(sampler, g),
                                 syn.fourier_vjp(run.param, image, g)),
            "adam": lambda: syn_optim.adam_step(spectrum, gs, state, lr=0.05),
        }
        return {k: best_of(fn, max(1, reps // 2)) for k, fn in parts.items()}


def table_row(label: str, t: dict[str, float]) -> str:
    ratio_full, ratio_cut = t["step"] / t["full"], t["step"] / t["cut"]
    host = t["step"] - t["session"]
    verdict = "yes" if ratio_full <= TARGET else "no"
    return (f"| {label} | {t['full']:.4f} | {t['cut']:.4f} | {t['step']:.4f} | "
            f"{ratio_full:.2f} | {ratio_cut:.2f} | {t['session']:.4f} | {host:.4f} "
            f"(one thread: param {t['param']:.3f}, transform {t['transform']:.3f}, "
            f"maps {t['maps']:.3f}, adjoints {t['adjoints']:.3f}, adam {t['adam']:.3f}) | "
            f"<= {TARGET} | {verdict} |")


def full_run(provider: str, steps: int, channels: int, layer: str) -> str:
    """Time ``maximize`` end to end: ``channels`` channels of ``layer`` at 224x224.

    The steady per-step time comes from the progress callbacks (first to last step), so the
    one-off session build is reported apart and left out of the 512-step extrapolation.
    """
    prep = api.PrepOptions(preset="caffe")
    opts = synth.MaximizeOptions(layer, channels=tuple(range(channels)), steps=steps)
    stamps: list[float] = []
    with api.Inspector(SQUEEZENET, provider, prep=prep) as inspector:
        start = time.perf_counter()
        result = synth.maximize(inspector, opts, lambda p: stamps.append(time.perf_counter()))
        total = time.perf_counter() - start
    per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    setup = total - per_step * steps
    return (f"{provider}: {channels} channels of {layer} at 224x224, {steps} steps: "
            f"{total:.1f} s in all ({per_step:.3f} s/step, setup {setup:.1f} s; 512 steps: "
            f"{setup + per_step * 512:.0f} s {'measured' if steps == 512 else 'extrapolated'});"
            f" mean objective {result.start.mean():.3g} -> {result.final.mean():.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", default="fire4/concat_1,fire8/concat_1")
    parser.add_argument("--full-run", action="store_true", default=None)
    parser.add_argument("--cpu-steps", type=int, default=16)
    parser.add_argument("--no-resnet", dest="resnet", action="store_false",
                        help="skip the ResNet-18 row (needs torch to export it)")
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args()
    cuda = runtime.cuda_runs()
    providers = ["cpu"] + (["cuda"] if cuda else [])
    print(f"# bench_synthesis on {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, numpy {np.__version__}, CUDA runs: {cuda}")
    print("| case | forward (full model) s | forward to layer s | step s | step / full | "
          "step / cut | session s | host s = step - session (parts) | target | pass |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cases: list[tuple[str, Path | bytes, str, api.PrepOptions | None]] = [
        (SQUEEZENET.stem, SQUEEZENET, layer, api.PrepOptions(preset="caffe"))
        for layer in args.layers.split(",")]
    cases.append(("mnist_cnn", MNIST, "conv2", None))
    if args.resnet:  # float32, one overlapping (stem) MaxPool: a ResNet-class network
        cases.append(("resnet18 (torch export)", export_onnx(resnet(18), (1, 3, 224, 224)),
                      RESNET_LAYER, None))
    for provider in providers:
        for stem, model, layer, prep in cases:
            if isinstance(model, Path) and not model.exists():
                print(f"| {stem} {layer} | skipped: {model} not found |")
                continue
            case = Case(model, layer, args.batch, provider, prep)
            try:
                label = f"{stem} {layer}, batch {args.batch}, {provider}"
                print(table_row(label, case.times(args.reps)), flush=True)
            finally:
                case.close()
    if args.full_run or (args.full_run is None and cuda):
        print(full_run("cuda" if cuda else "cpu", 512 if cuda else args.cpu_steps,
                       args.channels, "fire4/concat_1"))
    else:
        print(full_run("cpu", args.cpu_steps, 8, "fire4/concat_1") + " (reduced: 8 channels;"
              " --full-run for 64)")


if __name__ == "__main__":
    main()
