"""Tiny ONNX model builders with hand-set weights, shared by the tests.

Each builder's docstring sketches its graph. Models use IR 8 so onnxruntime 1.31 reads them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8


def make(graph: onnx.GraphProto, opset: int = 13) -> onnx.ModelProto:
    """Wrap a graph in a model with an IR version onnxruntime 1.31 accepts."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def conv_relu() -> onnx.ModelProto:
    """x(1,1,4,4) -> Conv[ones 3x3, bias 0] "conv" -> c -> Relu "relu" -> y.

    With x = arange(16) the conv output is [[45, 54], [81, 90]].
    """
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros((1,), np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [w, b],
    )
    return make(graph)


def conv_relu_dynamic() -> onnx.ModelProto:
    """x(N,1,4,4) -> Conv[ones 3x3, bias 0] "conv" -> c -> Relu "relu" -> y(N,1,2,2)."""
    model = conv_relu()
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "N"
    onnx.checker.check_model(model)
    return model
