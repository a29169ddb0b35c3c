"""``featviz compare`` and ``featviz stats``: the deployment audit commands."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from onnx_featviz.cli import choices
from onnx_featviz.cli.guards import refuse_overwrite, reports_errors
from onnx_featviz.cli.options import (
    CONTEXT,
    FiniteRange,
    emit_written,
    json_destination,
    json_target_option,
    prep_options,
    progress_bar,
    provider_option,
)

if TYPE_CHECKING:  # annotations only: the library loads inside each command
    from onnx_featviz import api
    from onnx_featviz.audit import compare as audit_compare

F = TypeVar("F", bound=Callable[..., Any])


def engine_options(fn: F) -> F:
    """Add ``--engine`` and the Ray options; pass them as ``engine`` and ``ray`` arguments."""
    options = [
        click.option("--engine", type=click.Choice(list(choices.ENGINES)),
                     default="local", show_default=True,
                     help="local: this process; ray: Ray Data actors (pip install "
                          "\"onnx-featviz[ray]\"), on --ray-address."),
        click.option("--ray-address", metavar="ADDR",
                     help="Ray cluster to use with --engine ray ('auto': the one started with "
                          "'ray start --head'; default: start a local one)."),
        click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Ray actors, each with its own onnxruntime session(s)."),
        click.option("--gpus-per-worker", type=FiniteRange(min=0.0), default=0.0,
                     show_default=True, help="GPUs per Ray actor; above 0 runs on CUDA."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, engine: str, ray_address: str | None, workers: int,
                gpus_per_worker: float, **kwargs: Any) -> Any:
        from onnx_featviz.audit.compare import RayOptions

        filesystem = None
        if engine == "ray":
            _refuse_providers()
            kwargs["data"], filesystem = _uri_filesystem(kwargs["data"])
        kwargs["engine"] = engine
        kwargs["ray"] = RayOptions(address=ray_address, workers=workers,
                                   gpus_per_worker=gpus_per_worker, filesystem=filesystem)
        return fn(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def _uri_filesystem(data: Path) -> tuple[Path, Any]:
    """DATA typed as a URI (``s3://b/val``, which ``Path`` turned into ``s3:/b/val``) as a path
    on its pyarrow filesystem; any other DATA as it is, with no filesystem."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)(.*)$", str(data))
    if match is None or data.exists():
        return data, None
    scheme, rest = match.groups()
    uri = f"{scheme}:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
    try:
        from pyarrow import fs as pafs
    except ImportError:  # no Ray either: the engine names the install command
        return data, None
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as err:
        raise click.BadParameter(f"cannot open {uri} ({err}); give a local path or a URI of a "
                                 "filesystem pyarrow knows (file://, s3://, gs://, hdfs://)",
                                 param_hint="DATA") from err
    return Path(path), filesystem


def _refuse_providers() -> None:
    """Refuse --provider / --provider-a / --provider-b given with --engine ray (not used there)."""
    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in ("provider", "provider_a", "provider_b")
             if ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                                   click.core.ParameterSource.ENVIRONMENT)]
    if given:
        raise click.UsageError(f"{', '.join(given)} is not used with --engine ray (each Ray "
                               "worker runs its sessions on CUDA when --gpus-per-worker > 0, "
                               "else on CPU); drop it and use --gpus-per-worker")


# == compare (owner: compare helper; keep other code outside this section) =====================
EXIT_INTERRUPTED = 130


def _exit_interrupted(what: str) -> NoReturn:
    """Ctrl-C before the first batch was done: nothing to write, still the interrupted code."""
    click.echo(f"featviz: interrupted before any input was {what}; nothing written", err=True)
    raise click.exceptions.Exit(EXIT_INTERRUPTED)


def _split_layers(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                  ) -> tuple[str, ...]:
    names = tuple(n.strip() for v in value for n in v.split(",") if n.strip())
    return names or ("convs",)


@click.command(context_settings=CONTEXT)
@click.argument("model_a", type=click.Path(path_type=Path))
@click.argument("model_b", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--provider-a", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
              show_default=True, help="Execution provider of MODEL_A.")
@click.option("--provider-b", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
              show_default=True, help="Execution provider of MODEL_B.")
@click.option("--layer", "--layers", "layers", multiple=True, callback=_split_layers,
              metavar="convs|all|L...",
              help="convs: one tensor per conv layer (default); all: every activation; or "
                   "node / tensor names of MODEL_A (repeat or comma-separate).")
@click.option("--metric", type=click.Choice(list(choices.METRICS)), default="snr",
              show_default=True, help="Metric drawn by --plot.")
@click.option("--min-cosine", type=FiniteRange(-1.0, 1.0), metavar="X",
              help="Fail below this cosine (default per precision: fp32 0.9999, fp16 0.999, "
                   "int8 0.98).")
@click.option("--min-snr", type=FiniteRange(), metavar="DB",
              help="Fail below this SNR in dB (default per precision: fp32 40, fp16 30, "
                   "int8 15).")
@json_target_option("Print everything as JSON on stdout, no table (the old '--json FILE' "
                    "still writes FILE).")
@click.option("--json-file", "json_file", type=click.Path(path_type=Path, dir_okay=False),
              metavar="FILE", help="Write everything as JSON to FILE.")
@click.option("--plot", "plot_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Write a PNG of --metric by layer depth.")
@click.option("--out", type=click.Path(path_type=Path), metavar="DIR",
              help="Write compare.json and compare_<metric>.png into DIR.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Inputs per run.")
@engine_options
@prep_options
@reports_errors
def compare(model_a: Path, model_b: Path, data: Path, provider_a: str, provider_b: str,
            layers: tuple[str, ...], metric: str, min_cosine: float | None,
            min_snr: float | None, json_target: str | None, json_file: Path | None,
            plot_file: Path | None,
            out: Path | None, batch: int, prep: api.PrepOptions, engine: str,
            ray: audit_compare.RayOptions) -> None:
    """Measure layer by layer how far MODEL_B drifts from MODEL_A over DATA.

    MODEL_B is a float16 or int8 (QDQ / QLinear) form of MODEL_A, or MODEL_A itself run on
    another provider. DATA is an image, a folder of images, a .npy/.npz file or an MNIST IDX
    file. Exit code: 0 all within the thresholds, 1 a threshold broken (or an error), 130
    interrupted (what was computed is written, marked partial).

    \b
    Examples:
      featviz compare model.onnx model_int8.onnx images/ --plot drift.png
      featviz compare model.onnx model.onnx images/ --provider-a cpu --provider-b cuda
      featviz compare model.onnx model_fp16.onnx t10k-images-idx3-ubyte.gz --json
      featviz compare model.onnx model_int8.onnx val/ --engine ray --ray-address auto
    """
    from onnx_featviz.audit import compare as audit_compare
    from onnx_featviz.audit import output as audit_output
    to_stdout, json_file = json_destination(json_target, json_file)
    json_path = json_file or (out / "compare.json" if out else None)
    plot_path = plot_file or (out / f"compare_{metric}.png" if out else None)
    refuse_overwrite([model_a, model_b, data], [json_path, plot_path])
    audit_output.check_outputs([json_path] if json_path else [],
                            images=[plot_path] if plot_path else [])
    options = audit_compare.CompareOptions(
        layers=layers, provider_a=provider_a, provider_b=provider_b, min_cosine=min_cosine,
        min_snr_db=min_snr, batch_size=batch, prep=prep, engine=engine, ray=ray)
    try:
        with progress_bar("compare") as bar:
            result = audit_compare.compare_models(model_a, model_b, data, options, progress=bar)
    except KeyboardInterrupt:
        _exit_interrupted("compared")
    written = audit_output.save_compare(result, json_path=json_path, plot_path=plot_path,
                                     metric=metric)
    if to_stdout:
        click.echo(json.dumps(audit_output.compare_to_json(result), indent=2))
    else:
        click.echo(audit_output.format_compare(result))
        emit_written(written, False)
    if result.partial:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    if not result.passed:
        raise click.exceptions.Exit(1)
# == end of compare ============================================================================


# == stats (owner: stats helper; keep other code outside this section) ========================
def _split_findings(ctx: click.Context, param: click.Parameter, value: str | None
                    ) -> tuple[str, ...]:
    from onnx_featviz.audit import compare as audit_compare
    kinds = tuple(k.strip() for k in (value or "").split(",") if k.strip())
    unknown = [k for k in kinds if k not in audit_compare.FINDINGS]
    if unknown:
        raise click.BadParameter(f"unknown finding {', '.join(unknown)}; choose from "
                                 f"{', '.join(audit_compare.FINDINGS)} (comma-separated)")
    return kinds


@click.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--layer", "--layers", "layers", multiple=True, callback=_split_layers,
              metavar="convs|all|L...",
              help="convs: each conv layer's activation output (default); all: every "
                   "activation; or node / tensor names (repeat or comma-separate).")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Inputs per run.")
@json_target_option("Print everything as JSON on stdout, no table (the old '--json FILE' "
                    "still writes FILE).")
@click.option("--json-file", "json_file", type=click.Path(path_type=Path, dir_okay=False),
              metavar="FILE", help="Write everything as JSON to FILE.")
@click.option("--plot", "plot_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Write a PNG summary, one panel per layer.")
@click.option("--fail-on", callback=_split_findings, metavar="dead,saturated,nonfinite",
              help="Exit with code 1 when any of these findings occurs (CI gate).")
@click.option("--saturation", type=FiniteRange(0.0, 1.0, min_open=True), default=0.5,
              show_default=True, help="Share of values at a Clip bound that makes a channel "
                                      "saturated.")
@provider_option
@engine_options
@prep_options
@reports_errors
def stats(model: Path, data: Path, layers: tuple[str, ...], batch: int,
          json_target: str | None, json_file: Path | None, plot_file: Path | None,
          fail_on: tuple[str, ...], saturation: float, provider: str, prep: api.PrepOptions,
          engine: str, ray: audit_compare.RayOptions) -> None:
    """Measure per-channel statistics of MODEL's layers over DATA, on the device.

    Per channel: mean, std, min, max, fraction of zeros and NaN/Inf count, merged over every
    input in float64. Findings: dead channels (never positive after a ReLU-like activation),
    saturated channels (at a Clip / ReLU6 bound for most values), layers with NaN/Inf.
    DATA is an image, a folder of images, a .npy/.npz file or an MNIST IDX file. Exit code: 0,
    1 a --fail-on finding occurred (or an error), 130 interrupted (what was measured is
    written, marked partial).

    \b
    Examples:
      featviz stats models/mnist_cnn.onnx t10k-images-idx3-ubyte.gz --plot stats.png
      featviz stats model.onnx images/ --layer all --json-file stats.json --fail-on dead,nonfinite
      featviz stats model.onnx val/ --engine ray --ray-address auto --workers 8
    """
    from onnx_featviz.audit import output as audit_output
    from onnx_featviz.audit import stats as audit_stats
    to_stdout, json_path = json_destination(json_target, json_file)
    refuse_overwrite([model, data], [json_path, plot_file])
    audit_output.check_outputs([json_path] if json_path else [],
                            images=[plot_file] if plot_file else [])
    options = audit_stats.StatsOptions(layers=layers, provider=provider, batch_size=batch,
                                     prep=prep, saturation=saturation, engine=engine, ray=ray)
    try:
        with progress_bar("stats") as bar:
            result = audit_stats.dataset_stats(model, data, options, progress=bar)
    except KeyboardInterrupt:
        _exit_interrupted("measured")
    written = audit_output.save_stats(result, json_path=json_path, plot_path=plot_file)
    if to_stdout:
        click.echo(json.dumps(audit_output.stats_to_json(result), indent=2))
    else:
        click.echo(audit_output.format_stats(result))
        emit_written(written, False)
    if result.partial:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    found = result.findings()
    if any(found[kind] for kind in fail_on):
        raise click.exceptions.Exit(1)
# == end of stats ==============================================================================
