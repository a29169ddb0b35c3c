"""The command line starts without the library: ``featviz --help`` and ``VERB --help`` import
neither numpy, onnx, onnxruntime, matplotlib nor PIL, and the choices it shows before importing
them equal the library's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onnx_featviz.cli import choices

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "onnx", "onnxruntime", "matplotlib", "PIL")
PROBE = ("import sys, runpy; sys.argv = ['featviz', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('onnx_featviz', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         f"print('LOADED', *[m for m in {HEAVY!r} if m in sys.modules])")


@pytest.mark.parametrize("verb", ["", "info", "filters", "maps", "cam", "backprop", "compare",
                                  "stats", "maximize", "invert", "predict", "build-conv", "report"])
def test_help_imports_no_heavy_module(verb: str) -> None:
    args = [verb, "--help"] if verb else ["--help"]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert "Usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "LOADED"


def test_choices_equal_the_library() -> None:
    from onnx_featviz import runtime
    from onnx_featviz.attribution import run as attribution_run
    from onnx_featviz.audit import compare
    from onnx_featviz.io import preprocess
    from onnx_featviz.synthesis import optim, run

    assert choices.BACKPROP_METHODS == attribution_run.BACKPROP_METHODS
    assert choices.METRICS == compare.METRICS
    assert choices.ENGINES == compare.ENGINES
    assert choices.RECIPES == run.RECIPES
    assert choices.OBJECTIVES == optim.OBJECTIVES == run.OBJECTIVES
    assert choices.PROVIDERS == runtime.PROVIDERS
    assert set(choices.PRESET_NAMES) == set(preprocess.PRESETS)
