"""The package's top-level names: every name in ``__all__`` resolves to the module's object."""

from __future__ import annotations

import importlib

import pytest

import onnx_featviz


def test_all_names_resolve_to_their_modules() -> None:
    for name in onnx_featviz.__all__:
        assert getattr(onnx_featviz, name) is not None, name
    assert onnx_featviz.compare_models is importlib.import_module(
        "onnx_featviz.audit.compare").compare_models
    assert onnx_featviz.maximize is importlib.import_module("onnx_featviz.synthesis.run").maximize
    assert onnx_featviz.open_data is importlib.import_module("onnx_featviz.io.data").open_data
    assert "dataset_stats" in dir(onnx_featviz)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = onnx_featviz.nope  # type: ignore[attr-defined]
