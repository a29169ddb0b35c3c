"""Session-scoped zoo exports: each (model, exporter, dynamic) is exported once per session.

Import the fixture into a test module (``from tests.conftest_zoo import zoo_export_fixture``;
its fixture name is ``zoo_export``). It is not registered in ``tests/conftest.py``, so sessions
that never touch the zoo never import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest

ZooExport = Callable[..., Path]


@pytest.fixture(scope="session", name="zoo_export")
def zoo_export_fixture(tmp_path_factory: pytest.TempPathFactory) -> ZooExport:
    """Return ``export(name, *, dynamo, dynamic=False) -> Path`` that caches per session.

    Skips when torch is missing; an (name, dynamo) pair in ``zoo.UNSUPPORTED`` is skipped too.
    """
    torch = pytest.importorskip("torch")
    from tests import zoo

    root = tmp_path_factory.mktemp("zoo")
    cache: dict[tuple[str, bool, bool], Path] = {}

    def export(name: str, *, dynamo: bool, dynamic: bool = False) -> Path:
        key = (name, dynamo, dynamic)
        if (name, dynamo) in zoo.UNSUPPORTED:
            pytest.skip(zoo.UNSUPPORTED[(name, dynamo)])
        if key not in cache:
            torch.set_num_threads(1)
            folder = f"{name}-{'dynamo' if dynamo else 'ts'}{'-dynamic' if dynamic else ''}"
            cache[key] = zoo.export(name, root / folder / "model.onnx", dynamo=dynamo,
                                    dynamic=dynamic)
        return cache[key]

    return export


def run_onnx(model_path: Path, batch: np.ndarray, extra: Sequence[str] = ()) -> list[np.ndarray]:
    """Run the model file on CPU (one thread), also returning the ``extra`` inner tensors.

    The extra tensors are exposed by appending untyped graph outputs with plain ``onnx``
    (independent of the package's own rewrite). Returns the graph outputs, then ``extra``.
    """
    import onnxruntime as ort

    model = onnx.load(str(model_path))  # pulls external data (model.onnx.data) in
    for name in extra:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return [np.asarray(a) for a in sess.run(None, {sess.get_inputs()[0].name: batch})]
