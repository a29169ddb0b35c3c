"""The README's Python examples, run in order in a scratch folder laid out like the repository
(``models/`` and ``../shared/data`` reachable by the README's relative paths).

Each ```python block runs as written, with two substitutions that only shorten it: the
SqueezeNet feature visualization runs 2 steps instead of 256 (and the inversion 2 instead of
300). Lines that the README shows as results (``result.first_nonfinite``) are plain expressions
and run too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHORTER = {"steps=256": "steps=2", 'api.InvertOptions("conv1_2")':
           'api.InvertOptions("conv1_2", steps=2)'}

pytestmark = pytest.mark.slow


def python_blocks(text: str) -> list[str]:
    """Every fenced ```python block of ``text``, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.fixture()
def scratch(tmp_path: Path) -> Path:
    """tmp/work with models/ linked, tmp/shared/data linked, and the SqueezeNet files the
    feature-visualization example names in its working folder."""
    data = shared_path("mnist", "t10k-images-idx3-ubyte.gz").parents[1]  # skips when absent
    work = tmp_path / "work"
    work.mkdir()
    (work / "models").symlink_to(ROOT / "models")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data)
    (work / "squeezenet1.1_caffe2_fp16.onnx").symlink_to(
        data / "models" / "squeezenet1.1_caffe2_fp16.onnx")
    (work / "cat.png").symlink_to(next((data / "images").glob("cat*")))
    return work


def test_readme_has_the_examples() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 6
    assert any("compare_models" in b for b in blocks) and any("Inspector" in b for b in blocks)


def test_readme_python_examples_run(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {}
    for index, block in enumerate(python_blocks(README.read_text())):
        for old, new in SHORTER.items():
            block = block.replace(old, new)
        try:
            exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
        except Exception as err:  # name the block that broke
            raise AssertionError(f"README python block {index + 1} failed: {err!r}\n{block}") \
                from err
    for written in ("mnist_int8.onnx", "mnist_fp16.onnx", "int8_cosine.png", "stats.json"):
        assert (scratch / written).is_file(), written
    assert not os.path.exists(ROOT / "mnist_int8.onnx")  # nothing was written into the repo
