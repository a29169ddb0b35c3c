"""Options, error reporting and progress bars shared by every ``featviz`` command."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from onnx_featviz.cli.choices import DETECTION_FORMATS, PRESET_NAMES, TARGET_KINDS
from onnx_featviz.cli.guards import F, _check_interrupt, refuse_overwrite
from onnx_featviz.errors import FeatvizError

if TYPE_CHECKING:  # annotations only: the library loads inside each command
    from onnx_featviz.structs import Progress, ProgressFn




CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}




# -- shared option parsing ------------------------------------------------------------------
def parse_floats(ctx: click.Context, param: click.Parameter, value: str | None
            ) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        numbers = (math.nan,)
    if not all(math.isfinite(n) for n in numbers):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of finite numbers, "
                                 "e.g. 0.485,0.456,0.406")
    return numbers


def parse_size(ctx: click.Context, param: click.Parameter, value: str | None
          ) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace("x", ",").split(",")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) not in (1, 2) or min(dims) < 1:
        raise click.BadParameter(f"{value!r} is not a size (whole, finite pixels); use 224 or "
                                 "224x224 (HxW)")
    return (dims[0], dims[-1])


def parse_input_size(ctx: click.Context, param: click.Parameter, value: str | None
                     ) -> tuple[int, int] | None:
    """Parse ``--size`` and refuse one above ``FEATVIZ_MAX_PIXELS`` before any work."""
    size = parse_size(ctx, param, value)
    if size is not None:
        check_limit(lambda: _limits().check_pixels(size[1], size[0], "--size"))
    return size


def _limits() -> Any:
    from onnx_featviz.io import limits

    return limits


def check_limit(check: Callable[[], None]) -> None:
    """Run a ``limits`` check, turning its InputError into a one-line usage error (exit 2)."""
    try:
        check()
    except FeatvizError as err:
        raise click.BadParameter(str(err)) from None


class FiniteRange(click.FloatRange):
    """A ``FloatRange`` that also refuses nan and inf (which compare as in range)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


SEED = click.IntRange(0, 2**32 - 1)


def parse_fill(ctx: click.Context, param: click.Parameter, value: str) -> float | str:
    if value.strip().lower() == "mean":
        return "mean"
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise click.BadParameter(f"{value!r} is not a fill value; use a finite number such as "
                                 "0, or 'mean'")
    return number


def parse_channels(ctx: click.Context | None, param: click.Parameter | None,
                   value: Sequence[str] | str | None) -> tuple[slice, ...] | None:
    """Parse ``--channel`` values: indices and ranges, comma-separated, repeatable.

    ``5`` is channel 5; ``0:16`` channels 0..15; ``8:`` from 8 to the end; ``20,22`` both.

    Returns:
        One slice per item, in the order given (None when nothing was given).

    Raises:
        click.BadParameter: an item that is not an index or a range ``a:b`` with a < b.
    """
    texts = [value] if isinstance(value, str) else list(value or ())
    items = [part for text in texts for part in text.replace(" ", "").split(",") if part]
    if not items:
        return None
    return tuple(_channel_item(item) for item in items)


def _channel_item(text: str) -> slice:
    try:
        parts = [int(p) if p else None for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] is not None and parts[0] >= 0:
        return slice(parts[0], parts[0] + 1)
    start, stop = (parts[0] or 0, parts[1]) if len(parts) == 2 else (-1, None)
    if start < 0 or (stop is not None and stop <= start):
        raise click.BadParameter(f"{text!r} is not a channel or channel range; use an index "
                                 "(5), a range (0:16, 8:) or a comma list (20,22)")
    return slice(start, stop)


def channel_option(help_text: str) -> Callable[[F], F]:
    """Add ``--channel`` (repeatable indices and ranges) and its old spelling ``--channels``,
    passed together as one ``channels`` argument (a tuple of slices, or None)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, channel: tuple[str, ...], old_channels: tuple[str, ...],
                    **kwargs: Any) -> Any:
            if old_channels:
                logging.getLogger("onnx_featviz.cli").warning(
                    "--channels is deprecated; use --channel %s (repeatable; indices, ranges "
                    "and comma lists)", " --channel ".join(old_channels),
                    extra={"after_success": True})
            kwargs["channels"] = parse_channels(None, None, (*old_channels, *channel))
            return fn(*args, **kwargs)

        wrapper = click.option("--channels", "old_channels", multiple=True, hidden=True,
                               callback=_check_channels)(wrapper)
        return click.option("--channel", "channel", multiple=True, callback=_check_channels,
                            metavar="K|A:B|K,L", help=help_text)(wrapper)  # type: ignore

    return decorate


def _check_channels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                    ) -> tuple[str, ...]:
    parse_channels(ctx, param, value)  # a bad value is a usage error before any work
    return value


def provider_option(fn: F) -> F:
    """Add ``--provider``."""
    return click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]),
                        default="auto", show_default=True,
                        help="Execution provider: CUDA when it runs (auto), or force one.")(fn)


def out_dir_option(fn: F) -> F:
    """Add ``--out`` (an output folder, default ``featviz-out``)."""
    return click.option("--out", type=click.Path(path_type=Path), default=Path("featviz-out"),
                        show_default=True, help="Output folder.")(fn)


def prep_options(fn: F) -> F:
    """Add the preprocessing options and pass them as one ``prep`` argument."""
    options = [
        click.option("--preset", type=click.Choice(PRESET_NAMES),
                     help="Preprocessing preset (default: the model's metadata, else unit/mnist)."),
        click.option("--mean", callback=parse_floats,
                     help="Per-channel mean, e.g. 0.485,0.456,0.406."),
        click.option("--std", callback=parse_floats,
                     help="Per-channel std, e.g. 0.229,0.224,0.225."),
        click.option("--scale", type=FiniteRange(),
                     help="Pixel scale before mean/std (1/255 = 0.00392)."),
        click.option("--bgr", is_flag=True, default=None, help="Feed channels in BGR order."),
        click.option("--size", callback=parse_input_size,
                     help="Input size for dynamic models: 224 or HxW."),
        click.option("--resize", type=click.Choice(["crop", "stretch", "letterbox"]),
                     help="Resize policy (default crop: short side then center crop)."),
        click.option("--crop-fraction", type=click.FloatRange(0.0, 1.0, min_open=True),
                     help="With crop: resize the short side to size / FRACTION, then crop the "
                          "centre (0.875: the torchvision/Keras evaluation crop)."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, preset: str | None, mean: Any, std: Any, scale: float | None,
                bgr: bool | None, size: Any, resize: str | None, crop_fraction: float | None,
                **kwargs: Any) -> Any:
        from onnx_featviz.inspector import PrepOptions

        kwargs["prep"] = PrepOptions(preset=preset, mean=mean, std=std, scale=scale,
                                     channel_order="BGR" if bgr else None, size=size,
                                     resize=resize, crop_fraction=crop_fraction)
        return fn(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def parse_box(ctx: click.Context, param: click.Parameter, value: str | None
              ) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        x0, y0, x1, y1 = (float(p) for p in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a box; use x0,y0,x1,y1 in input pixels, "
                                 "e.g. 8,4,40,30") from None
    if not (x0 < x1 and y0 < y1):
        raise click.BadParameter(f"box {value!r} needs x0 < x1 and y0 < y1")
    return (x0, y0, x1, y1)


def target_options(fn: F) -> F:
    """Add the target options (segmentation, detection, element, extra inputs) as ``goal``.

    ``--target all`` or a multi-index ``--target 3,4,5`` becomes an element target of the
    ``--score`` tensor; the command then gets ``target=None``.
    """
    options = [
        click.option("--kind", type=click.Choice(TARGET_KINDS), default="auto",
                     show_default=True, help="Target kind; auto: detection options -> "
                     "detection, a 4-D output -> segmentation, (N, classes) -> class."),
        click.option("--region", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                     help="Segmentation: mask image (nonzero = inside), any size."),
        click.option("--box", callback=parse_box, help="x0,y0,x1,y1 input pixels: the "
                     "segmentation region, or the detection with the best IoU."),
        click.option("--detection", type=click.IntRange(min=0),
                     help="Detection rank in each image (0 = best)."),
        click.option("--detections", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Explain each image's K best detections (one session call)."),
        click.option("--detect-format", type=click.Choice(DETECTION_FORMATS),
                     help="Detector output format (default: read from the output shapes)."),
        click.option("--conf", type=click.FloatRange(0.0, 1.0), default=0.25,
                     show_default=True, help="Detection confidence threshold."),
        click.option("--inputs", "extra_inputs", type=click.Path(path_type=Path, exists=True),
                     help=".npz with the model's other inputs, name -> (N, ...) array."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, kind: str, region: Path | None, box: Any, detection: int | None,
                detections: int, detect_format: str | None, conf: float,
                extra_inputs: Path | None, **kwargs: Any) -> Any:
        from onnx_featviz.attribution.detection import DetectionOptions
        from onnx_featviz.attribution.seeds import TargetSpec
        from onnx_featviz.attribution.targets import parse_element_target

        element = None
        text = kwargs.get("target")
        if text is not None and (text.strip().lower() == "all" or "," in text):
            element, kwargs["target"] = parse_element_target(text), None
        kwargs["goal"] = TargetSpec(
            kind=kind, region=_read_mask(region), box=box, detection=detection,
            detections=detections, detect_format=detect_format,
            decode=DetectionOptions(conf=conf), element=element,
            inputs=_read_inputs(extra_inputs))
        return fn(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def _read_mask(path: Path | None) -> Any:
    if path is None:
        return None
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _read_inputs(path: Path | None) -> Any:
    if path is None:
        return None
    import numpy as np

    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def emit_written(paths: Sequence[Path], as_json: bool, extra: dict[str, Any] | None = None
                  ) -> None:
    """Print the paths written, or (``--json``) a JSON record of them and ``extra``; with
    ``--json-file`` the record is also written to that file."""
    record = {"written": [str(p) for p in paths], **(extra or {})}
    if _json_to_file(record):
        paths = [*paths, click.get_current_context().meta[_JSON_FILE]]
        record["written"].append(str(paths[-1]))
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for path in paths:
        click.echo(str(path))


def emit_json(record: Any, as_json: bool) -> bool:
    """Print ``record`` as JSON when ``as_json``; write it to ``--json-file`` when given.

    Returns:
        Whether it was printed (the caller prints its text form otherwise).
    """
    _json_to_file(record)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    return as_json


_JSON_FILE = "featviz.json_file"


def _json_to_file(record: Any) -> bool:
    path = click.get_current_context().meta.get(_JSON_FILE)
    if path is None:
        return False
    from onnx_featviz.io.files import save_json

    save_json(record, path)
    return True


def json_file_option(fn: F) -> F:
    """Add ``--json-file FILE``: the JSON ``--json`` prints, written to FILE (atomically).

    FILE is checked before any work: it may not be one of the command's input paths.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, json_file: Path | None, **kwargs: Any) -> Any:
        if json_file is not None:
            context = click.get_current_context()
            inputs = [value for param in context.command.params
                      if isinstance(param, click.Argument)
                      for value in _as_paths(kwargs.get(param.name or ""))]
            refuse_overwrite(inputs, [json_file])
            context.meta[_JSON_FILE] = json_file
        return fn(*args, **kwargs)

    return click.option("--json-file", "json_file", metavar="FILE",
                        type=click.Path(path_type=Path, dir_okay=False),
                        help="Also write the JSON record to FILE.")(wrapper)  # type: ignore


def _as_paths(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, Path)]
    return []


def json_destination(json_target: str | None, json_file: Path | None) -> tuple[bool, Path | None]:
    """(print to stdout, file) for ``--json [FILE]`` and ``--json-file FILE``.

    ``--json`` alone (or ``--json -``) prints; the old ``--json FILE`` still writes FILE, with
    a notice that ``--json-file FILE`` is its new spelling.
    """
    if json_target is None or json_target == "-":
        return json_target == "-", json_file
    logging.getLogger("onnx_featviz.cli").warning(
        "--json FILE is deprecated; use --json-file %s (--json alone prints JSON)", json_target,
        extra={"after_success": True})
    return False, json_file or Path(json_target)


def json_target_option(help_text: str) -> Callable[[F], F]:
    """``--json`` that prints JSON (no value), or the deprecated ``--json FILE``."""
    return click.option("--json", "json_target", is_flag=False, flag_value="-", default=None,
                        metavar="[FILE]", help=help_text)


class _Bar:
    """Draw a one-line progress bar with rate and ETA on a terminal, sparse lines elsewhere."""

    def __init__(self, label: str, stream: TextIO, *, interval: float) -> None:
        self.label, self.stream, self.interval = label, stream, interval
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last = -1.0e9
        self.latest: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        _check_interrupt(progress)
        self.latest = progress
        now = time.monotonic()
        finished = progress.total is not None and progress.done >= progress.total
        if not finished and now - self.last < (0.1 if self.tty else self.interval):
            return
        self.last = now
        self._draw(progress, now)

    def _draw(self, progress: Progress, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = progress.done / elapsed
        text = f"{self.label} {progress.done}"
        if progress.total:
            frac = min(progress.done / progress.total, 1.0)
            bar = "#" * int(frac * 24)
            eta = (progress.total - progress.done) / rate if rate > 0 else 0.0
            text = (f"{self.label} [{bar:<24}] {progress.done}/{progress.total} "
                    f"{progress.unit}s {rate:.1f}/s ETA {_clock(eta)}")
        else:
            text += f" {progress.unit}s {rate:.1f}/s"
        if progress.status:
            text += f" {progress.status}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.latest is not None:
            self._draw(self.latest, time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@contextmanager
def progress_bar(label: str, *, enabled: bool = True, interval: float = 5.0
                 ) -> Iterator[ProgressFn | None]:
    """Yield a ``ProgressFn`` that draws on stderr (None when disabled, e.g. with ``--json``).

    On a terminal the bar redraws in place; elsewhere (CI logs) a line every ``interval`` s
    and a final one.
    """
    if not enabled:  # draw nothing, but still stop at the next step after a Ctrl-C
        yield _check_interrupt
        return
    bar = _Bar(label, sys.stderr, interval=interval)
    try:
        yield bar
    finally:
        bar.close()

