"""Shared pytest fixtures: paths to the repo's models and ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODELS = REPO / "models"


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data {path.name} not found at ../shared/data beside the repo")
    return path


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
