"""The ``featviz`` command line: one module per group of verbs, plus the shared options."""

from onnx_featviz.cli.commands import main

__all__ = ["main"]
