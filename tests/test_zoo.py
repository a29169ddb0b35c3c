"""Every zoo model exports with both torch exporters, loads in onnxruntime and matches torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest

from tests.conftest_zoo import ZooExport, run_onnx, zoo_export_fixture  # noqa: F401

torch = pytest.importorskip("torch")
zoo = pytest.importorskip("tests.zoo")

pytestmark = pytest.mark.slow
EXPORTERS = pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])


def torch_forward(name: str, x: Any) -> np.ndarray:
    """Return the zoo model's own forward output as numpy."""
    with torch.no_grad():
        return zoo.build(name)(x).numpy()  # type: ignore[no-any-return]


@EXPORTERS
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_export_matches_torch(zoo_export: ZooExport, name: str, dynamo: bool) -> None:
    path = zoo_export(name, dynamo=dynamo)
    onnx.checker.check_model(str(path))
    x = zoo.sample_input(name, seed=1)
    (got,) = run_onnx(path, x.numpy())
    want = torch_forward(name, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    if dynamo:  # the default exporter keeps weights beside the graph
        assert (path.parent / (path.name + ".data")).exists()


@EXPORTERS
@pytest.mark.parametrize("name", sorted(zoo.DYNAMIC))
def test_dynamic_export_runs_other_sizes(zoo_export: ZooExport, name: str,
                                         dynamo: bool) -> None:
    path = zoo_export(name, dynamo=dynamo, dynamic=True)
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]
    h, w = zoo.DYNAMIC[name]
    x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(2))
    (got,) = run_onnx(path, x.numpy())
    np.testing.assert_allclose(got, torch_forward(name, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("name", "dynamo"), sorted(zoo.UNSUPPORTED))
def test_unsupported_exports_still_fail(tmp_path: object, name: str, dynamo: bool) -> None:
    """The skip list stays honest: once torch exports these, this test fails."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with pytest.raises(Exception, match="adaptive_avg_pool2d|not a factor"):
        zoo.export(name, tmp_path / "model.onnx", dynamo=dynamo)
