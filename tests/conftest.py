"""Shared test helpers: paths to the repo's models and ../shared/data, the CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from onnx_featviz.structs import Progress, ProgressFn

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODELS = REPO / "models"


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data {path.name} not found at ../shared/data beside the repo")
    return path


def run(*args: object) -> Result:
    """Invoke ``featviz`` with ``args`` (str() of each) in-process."""
    from onnx_featviz.cli.commands import main

    return CliRunner().invoke(main, [str(a) for a in args])


def strict_json(text: str) -> Any:
    """Parse JSON refusing the non-standard NaN / Infinity tokens."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def interrupting_bar(after: int) -> Callable[..., AbstractContextManager[ProgressFn]]:
    """A stand-in for ``cli_audit.progress_bar`` whose callback raises KeyboardInterrupt once
    ``after`` items are done (a Ctrl-C in the middle of a run)."""
    @contextmanager
    def bar_factory(label: str, **kwargs: Any) -> Iterator[ProgressFn]:
        def bar(progress: Progress) -> None:
            if progress.done >= after:
                raise KeyboardInterrupt
        yield bar
    return bar_factory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip @pytest.mark.gpu tests unless CUDA really runs."""
    if not any("gpu" in item.keywords for item in items):
        return
    from tests.gpu import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="CUDAExecutionProvider does not run on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
