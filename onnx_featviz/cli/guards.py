"""What every command guarantees: one stderr line per failure (never a traceback), exit 130 on
Ctrl-C, inputs never replaced, unreadable folder files skipped and counted, a partial manifest
when interrupted while writing.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from onnx_featviz.errors import FeatvizError, LayerNotFoundError

F = TypeVar("F", bound=Callable[..., Any])
#: Exit code of a run stopped with Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

if TYPE_CHECKING:
    from onnx_featviz.structs import Progress


def reports_errors(fn: F) -> F:
    """Turn library errors into one-line messages with exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LayerNotFoundError as err:
            raise click.ClickException(f"{err}; `featviz info MODEL` lists every layer and "
                                       "tensor") from None
        except FeatvizError as err:
            raise click.ClickException(cli_message(err)) from None

    return wrapper  # type: ignore[return-value]


def cli_message(err: FeatvizError) -> str:
    """The error's one line, with the library's advice put in command-line terms."""
    text = str(err)
    if "no gradient rule for" in text:
        text += ("; on the command line: --layer a layer after that op, or --method eigen_cam, "
                 "score_cam, ablation_cam or occlusion")
    return text


class HeldNotices(logging.Filter):
    """Hold notices logged with ``extra={"after_success": True}`` until the command ends.

    They describe a successful run (which preprocessing was assumed), so they are printed after
    its output, and dropped when the command fails: its error stays one line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "after_success", False):
            self.held.append(record)
            return False
        return True

    def release(self, handler: logging.Handler, context: click.Context) -> None:
        """Print the held notices through ``handler`` unless the command failed."""
        held, self.held = self.held, []
        if not context.meta.get("featviz.failed"):
            for record in held:
                record.after_success = False
                handler.emit(record)  # not handle(): the filters saw it already


# -- guards: one line per failure, inputs never replaced ------------------------------------
class _UsageLine(click.ClickException):
    """A usage error shown as one ``Error:`` line (exit 2), the help hint appended."""

    exit_code = 2


def _debugging(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("FEATVIZ_DEBUG", "") not in ("", "0")


def _bug_line(err: BaseException) -> str:
    text = " ".join(str(err).split())[:300] or "no message"
    return (f"internal error ({type(err).__name__}: {text}); this is a bug in featviz, please "
            "report it; rerun with --debug (or FEATVIZ_DEBUG=1) to see the traceback")


_INTERRUPTED = threading.Event()


def _raise_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: remember it, and raise KeyboardInterrupt unless an import is under way.

    Raised inside importlib (a lazy import's module-lock callback) it would be swallowed, with
    a traceback printed; then the next progress step, or the end of the command, raises it.
    """
    _INTERRUPTED.set()
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def _check_interrupt(progress: Progress | None = None) -> None:
    """Raise KeyboardInterrupt at the next progress step after a swallowed Ctrl-C."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


@contextmanager
def _interrupts_raise() -> Iterator[None]:
    """While a command runs, let Ctrl-C raise KeyboardInterrupt (so partial work is saved),
    replacing the exit-at-once handler ``__main__`` installs for the import phase."""
    handler = None
    _INTERRUPTED.clear()
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGINT)
        if getattr(handler, "featviz_startup", False):
            signal.signal(signal.SIGINT, _raise_interrupt)
        else:
            handler = None
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


class GuardedGroup(click.Group):
    """A command group whose commands end in one stderr line, never a traceback.

    ``FeatvizError``: its message (exit 1); a usage error: one ``Error:`` line (exit 2);
    Ctrl-C: ``featviz: interrupted`` (exit 130); any other exception: one line naming the bug
    and the ``--debug`` / ``FEATVIZ_DEBUG=1`` hint (exit 1), the traceback only when debugging.
    """

    def invoke(self, ctx: click.Context) -> Any:
        with _interrupts_raise(), warnings.catch_warnings():
            if not _debugging(ctx):  # non-finite results are reported as notices instead
                warnings.simplefilter("ignore", RuntimeWarning)
            try:
                return self._invoke_marking_failure(ctx)
            except (click.exceptions.Exit, click.Abort):
                raise
            except click.UsageError as err:
                where = err.ctx.command_path if err.ctx is not None else ctx.command_path
                raise _UsageLine(f"{err.format_message()} (see '{where} -h')") from None
            except click.ClickException:
                raise
            except KeyboardInterrupt:
                click.echo("featviz: interrupted; stopped before finishing", err=True)
                raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
            except FeatvizError as err:
                raise click.ClickException(cli_message(err)) from None
            except MemoryError:
                raise click.ClickException(
                    "ran out of memory; use smaller inputs (--size, --batch), or lower the "
                    "FEATVIZ_MAX_BYTES / FEATVIZ_MAX_PIXELS limits") from None
            except Exception as err:
                if _debugging(ctx):
                    raise
                raise click.ClickException(_bug_line(err)) from None


    def _invoke_marking_failure(self, ctx: click.Context) -> Any:
        """Run the command; any way out but success marks the run failed (``HeldNotices``)."""
        try:
            result = super().invoke(ctx)
            _check_interrupt()  # a Ctrl-C that landed in an import stops here at the latest
            return result
        except click.exceptions.Exit as err:
            if err.exit_code:
                ctx.meta["featviz.failed"] = True
            raise
        except BaseException:
            ctx.meta["featviz.failed"] = True
            raise


def _same_file(out: Path, source: Path) -> bool:
    """Whether writing ``out`` would replace ``source`` (same path, same inode, or a file a
    ``source`` folder lists as an input)."""
    try:
        if os.path.realpath(out) == os.path.realpath(source):
            return True
        if out.exists() and source.exists() and os.path.samefile(out, source):
            return True
        if source.is_dir() and out.is_file():
            from onnx_featviz.io.data import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS
            inside = Path(os.path.realpath(out)).is_relative_to(os.path.realpath(source))
            return inside and out.suffix.lower() in (*IMAGE_EXTENSIONS, *ARRAY_EXTENSIONS)
    except (OSError, ValueError):
        return False
    return False


def refuse_overwrite(inputs: Iterable[Path | None], outputs: Iterable[Path | None]) -> None:
    """Refuse, before any work, an output path that resolves to one of the inputs.

    Raises:
        click.UsageError: an output is an input file (same path or inode), or an input file
            found in an input folder (exit 2).
    """
    sources = [p for p in inputs if p is not None and str(p) != "-"]
    for out in outputs:
        if out is None or str(out) == "-":
            continue
        for source in sources:
            if _same_file(out, source):
                raise click.UsageError(f"output {out} is the input {source}; writing it would "
                                       "replace the input; choose another output path")


def readable_images(inspector: Any, images: Sequence[Path]) -> list[Path]:
    """Return the image files named by ``images`` (folders expanded) that load and fit the
    model, skipping the others with one notice that counts them.

    Raises:
        InputError: no file was readable (the first reason is given).
    """
    from onnx_featviz.api import expand_images
    from onnx_featviz.errors import InputError

    files = expand_images(images)
    good: list[Path] = []
    reasons: list[str] = []
    for path in files:
        try:
            inspector.load_batch(path)
        except InputError as err:
            if len(files) == 1:
                raise
            reasons.append(str(err))
            continue
        good.append(path)
    if not good:
        raise InputError(f"none of the {len(files)} input files could be used; first: "
                         f"{reasons[0]}")
    if reasons:
        click.echo(f"featviz: skipped {len(reasons)} of {len(files)} input files that could "
                   f"not be used (first: {reasons[0]})", err=True)
    return good


MANIFEST = "manifest.json"


def save_or_mark_partial(save: Callable[[], list[Path]], out: Path, names: Sequence[str]
                         ) -> list[Path]:
    """Run ``save``; on Ctrl-C write ``out/manifest.json`` listing what was written, marked
    ``"partial": true`` (only when something was written), then exit 130 with one line.

    Args:
        save: writes the pictures and returns their paths; out: the output folder;
        names: the pictures' relative names under ``out``.
    """
    start = time.time_ns()
    try:
        return save()
    except KeyboardInterrupt:
        written = [str(out / n) for n in names if _written_since(out / n, start)]
        if written and out.suffix.lower() != ".png":
            from onnx_featviz.io.files import save_json

            save_json({"partial": True, "written": written}, out / MANIFEST)
            click.echo(f"featviz: interrupted after writing {len(written)} of {len(names)} "
                       f"pictures; {out / MANIFEST} lists them (partial)", err=True)
        else:
            click.echo("featviz: interrupted; stopped before finishing", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _written_since(path: Path, start_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= start_ns - 10**9  # coarse file-system clocks
    except OSError:
        return False


def notice_nonfinite(values: Any, what: str) -> None:
    """Print one notice when ``values`` (an array) holds NaN or Inf."""
    import numpy as np

    array = np.asarray(values)
    if array.dtype.kind in "fc":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            click.echo(f"featviz: {bad} of {array.size} {what} are NaN or Inf: the model "
                       "produced non-finite values for these inputs; check the inputs and "
                       "the preprocessing (featviz stats finds the layer)", err=True)

