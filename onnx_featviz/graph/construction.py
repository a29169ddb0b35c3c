"""Build small models from user filters (the hand-made filters walkthrough). Pure."""

from __future__ import annotations

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz.errors import InputError

ACTIVATIONS = ("none", "relu")
IR_VERSION = 8
OPSET = 13


def edge_filters() -> NDArray[np.float32]:
    """Return the four 4x4 edge filters of the hand-made filters tutorial, shape (4, 1, 4, 4).

    Rows of ``[-1, -1, 1, 1]`` (a vertical edge, dark to light), its negation, its transpose
    (a horizontal edge) and the transpose's negation.
    """
    vertical = np.tile(np.array([-1, -1, 1, 1], np.float32), (4, 1))
    bank = np.stack([vertical, -vertical, vertical.T, -vertical.T])
    return bank[:, None, :, :].astype(np.float32)


def as_filter_bank(array: NDArray[np.generic]) -> NDArray[np.float32]:
    """Return ``array`` as an (O, I, kH, kW) float32 bank; (O, kH, kW) and (kH, kW) get axes.

    Raises:
        InputError: not 2-4 dimensional, not numeric, or not finite.
    """
    bank = np.asarray(array)
    if bank.dtype.kind not in "fiu":
        raise InputError(f"filters must be numbers, got dtype {bank.dtype}; save a float array")
    if bank.ndim == 2:
        bank = bank[None, None]
    elif bank.ndim == 3:
        bank = bank[:, None]
    elif bank.ndim != 4:
        raise InputError(f"filters must have shape (O, I, kH, kW), (O, kH, kW) or (kH, kW), "
                         f"got shape {bank.shape}; reshape the array")
    if not np.all(np.isfinite(bank)):
        raise InputError("filters contain NaN or Inf; replace them with finite numbers")
    return bank.astype(np.float32)


def build_conv_model(filters: NDArray[np.generic], *, activation: str = "relu",
                     bias: NDArray[np.generic] | None = None) -> onnx.ModelProto:
    """Return a one-conv model: ``input (N, I, H, W) -> Conv "conv" -> [Relu "relu"]``.

    The conv has stride 1 and no padding; height and width are dynamic, the output of the conv is
    ``conv`` and that of the activation ``relu``.

    Args:
        filters: (O, I, kH, kW), (O, kH, kW) or (kH, kW) weights.
        activation: ``"relu"`` or ``"none"``.
        bias: (O,) bias, default zeros.

    Raises:
        InputError: bad filter shape or activation name.
    """
    bank = as_filter_bank(filters)
    if activation not in ACTIVATIONS:
        raise InputError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    out_ch, in_ch = bank.shape[:2]
    b = np.zeros(out_ch, np.float32) if bias is None else np.asarray(bias, np.float32)
    nodes = [helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["conv"],
                              name="conv")]
    final = "conv"
    if activation == "relu":
        nodes.append(helper.make_node("Relu", ["conv"], ["relu"], name="relu"))
        final = "relu"
    graph = helper.make_graph(
        nodes, "featviz_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_ch, "H", "W"])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, ["N", out_ch, "OH", "OW"])],
        [numpy_helper.from_array(bank, "conv.weight"), numpy_helper.from_array(b, "conv.bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="onnx-featviz")
    onnx.checker.check_model(model)
    return model


def parse_filter_text(text: str, *, source: str = "text") -> NDArray[np.float32]:
    """Parse filters written as rows of numbers; blank lines separate filters.

    Returns:
        (O, kH, kW) float32, one block per filter.

    Raises:
        InputError: a non-number, or blocks of different shapes.
    """
    blocks = [b for b in "\n".join(line.split("#")[0] for line in text.splitlines())
              .split("\n\n") if b.strip()]
    try:
        arrays = [np.array([[float(v) for v in row.replace(",", " ").split()]
                            for row in block.strip().splitlines() if row.strip()], np.float32)
                  for block in blocks]
    except ValueError as err:
        raise InputError(f"{source} holds something that is not a number ({err}); write "
                         "filters as rows of numbers, a blank line between filters") from err
    shapes = {a.shape for a in arrays}
    if not arrays or len(shapes) != 1 or arrays[0].ndim != 2:
        raise InputError(f"{source} must hold equal-sized rectangular filters separated by "
                         f"blank lines, got shapes {sorted(shapes)}")
    return np.stack(arrays)
