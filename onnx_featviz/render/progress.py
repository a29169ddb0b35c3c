"""Progress bars for long library runs: tqdm in notebooks and terminals, nothing elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from onnx_featviz.structs import Progress, ProgressFn, auto_progress


def interactive() -> bool:
    """Return whether a person is watching: an IPython kernel or shell, or stderr on a terminal."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextmanager
def progress_for(progress: ProgressFn | None, label: str) -> Iterator[ProgressFn | None]:
    """Yield the callback a run reports to.

    ``progress`` as given, except the default :func:`structs.auto_progress`, which becomes a
    tqdm bar (``tqdm.auto``: a widget in notebooks, text on a terminal) when :func:`interactive`
    and None otherwise (tests, logs, pipes). The bar is closed when the block ends.
    """
    if progress is not auto_progress:
        yield progress
        return
    bar = _open_bar(label) if interactive() else None
    if bar is None:
        yield None
        return
    try:
        yield lambda update: _advance(bar, update)
    finally:
        bar.close()


def _open_bar(label: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a broken install should not stop a run
        return None
    return tqdm(desc=label, leave=False, dynamic_ncols=True)


def _advance(bar: Any, update: Progress) -> None:
    """Move the bar to ``update.done`` of ``update.total`` and show its status."""
    if update.total is not None and bar.total != update.total:
        bar.total = update.total
    bar.unit = update.unit
    bar.n = update.done
    if update.status:
        bar.set_postfix_str(update.status, refresh=False)
    bar.refresh()
