"""Tests of runtime: provider resolution, fallbacks, batching, large-model path, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnx_featviz import runtime
from onnx_featviz.errors import InputError, ModelError, ProviderError
from tests import graphs
from tests.gpu import cuda_available


def _x() -> np.ndarray:
    return np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)


def test_cpu_session_runs_hand_checked_conv() -> None:
    with runtime.Session(graphs.conv_relu(), "cpu") as session:
        assert session.providers == ("CPUExecutionProvider",)
        out = session.run({"x": _x()})
    np.testing.assert_array_equal(out["y"], [[[[45, 54], [81, 90]]]])


def test_session_without_spinning_gives_the_same_result() -> None:
    with runtime.Session(graphs.conv_relu(), "cpu", spinning=False) as session:
        out = session.run({"x": _x()})
    np.testing.assert_array_equal(out["y"], [[[[45, 54], [81, 90]]]])


def test_unknown_provider_lists_choices() -> None:
    with pytest.raises(ProviderError, match="auto, cuda, cpu"):
        runtime.Session(graphs.conv_relu(), "tpu")


@pytest.mark.skipif(cuda_available(), reason="CUDA runs here; the fallback cannot be observed")
def test_auto_falls_back_to_cpu_with_one_short_notice(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.WARNING, logger="onnx_featviz.runtime"):
        with runtime.Session(graphs.conv_relu(), "auto") as session:
            assert session.providers == ("CPUExecutionProvider",)
    notices = [r for r in caplog.records if r.name == "onnx_featviz.runtime"]
    listed = "CUDAExecutionProvider" in ort.get_available_providers()
    assert len(notices) == (1 if listed else 0)
    # onnxruntime's own long red log about the failed CUDA load must not reach the terminal.
    assert "Failed to load library" not in capfd.readouterr().err


@pytest.mark.skipif(cuda_available(), reason="CUDA runs here")
def test_cuda_request_without_cuda_raises_provider_error() -> None:
    with pytest.raises(ProviderError, match="provider 'cpu'"):
        runtime.Session(graphs.conv_relu(), "cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    with runtime.Session(graphs.conv_relu_dynamic(), "cuda") as gpu:
        assert gpu.on_cuda
        got = gpu.run({"x": x})["y"]
    with runtime.Session(graphs.conv_relu_dynamic(), "cpu") as cpu:
        want = cpu.run({"x": x})["y"]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_max_batch_splits_and_concatenates_exactly() -> None:
    x = np.random.default_rng(0).standard_normal((7, 1, 4, 4)).astype(np.float32)
    with runtime.Session(graphs.conv_relu_dynamic(), "cpu") as session:
        whole = session.run({"x": x})["y"]
        split = session.run({"x": x}, ["y"], max_batch=3)["y"]
    assert split.shape == (7, 1, 2, 2)
    np.testing.assert_array_equal(split, whole)


def test_bad_feeds_are_input_errors() -> None:
    with runtime.Session(graphs.conv_relu(), "cpu") as session:
        with pytest.raises(InputError, match="missing \\['x'\\]"):
            session.run({"image": _x()})
        with pytest.raises(InputError, match="the model expects x"):
            session.run({"x": np.zeros((1, 3, 4, 4), np.float32)})


def test_model_onnxruntime_rejects_is_model_error() -> None:
    model = graphs.conv_relu()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelError, match="onnxruntime cannot load the model"):
        runtime.Session(model, "cpu")


def test_large_model_path_goes_through_a_temporary_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "_PROTO_LIMIT", 1)
    session = runtime.Session(graphs.conv_relu(), "cpu")
    tmp = session._tmp
    assert tmp is not None
    folder = Path(tmp.name)
    assert (folder / "model.data").exists()
    np.testing.assert_array_equal(session.run({"x": _x()})["y"], [[[[45, 54], [81, 90]]]])
    session.close()
    assert not folder.exists()


def test_large_model_path_leaves_the_callers_model_intact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "_PROTO_LIMIT", 1)
    model = graphs.conv_relu()
    before = model.SerializeToString()
    runtime.Session(model, "cpu").close()
    assert model.SerializeToString() == before


def test_fixed_batch_models_run_one_sample_per_call() -> None:
    # conv_relu() declares batch 1 (as the Caffe2 zoo models do); three images still run.
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    with runtime.Session(graphs.conv_relu(), "cpu") as fixed, \
            runtime.Session(graphs.conv_relu_dynamic(), "cpu") as dynamic:
        got = fixed.run({"x": x}, max_batch=8)["y"]
        want = dynamic.run({"x": x})["y"]
    np.testing.assert_array_equal(got, want)
