"""``python -m onnx_featviz`` (and the ``featviz`` console script) runs the command line.

Ctrl-C while the program is still importing (click, numpy, onnx: seconds on a busy machine)
exits at once with one line and code 130; once a command runs, ``cli.options.GuardedGroup``
turns it into the same line after the command's own clean-up (partial manifests).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    """Stop during start-up: nothing has been written yet, so there is nothing to clean up."""
    os.write(2, b"featviz: interrupted while starting; nothing written\n")
    os._exit(EXIT_INTERRUPTED)


_exit_at_once.featviz_startup = True  # type: ignore[attr-defined]


def run() -> None:
    """Run ``featviz`` with the arguments in ``sys.argv``; the exit code ends the process."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_at_once)
    try:
        from onnx_featviz.cli.commands import main
    except KeyboardInterrupt:  # a handler set by an embedding program raised
        sys.stderr.write("featviz: interrupted while starting; nothing written\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    main(prog_name="featviz")


if __name__ == "__main__":
    run()
