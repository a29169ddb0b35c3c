"""Score-CAM masking on the device: a copy of the model whose input is the image times an
upsampled layer map, so only the maps and an image index are fed per row.
"""

from __future__ import annotations

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper

from onnx_featviz.errors import InputError
from onnx_featviz.graph import catalog as catalog
from onnx_featviz.graph.rewrite import _CONST, _context, _copy

# -- Score-CAM masking on the device ---------------------------------------------------------
MASK_IMAGES = "featviz/mask/images"


MASK_INDEX = "featviz/mask/index"


MASK_MAPS = "featviz/mask/maps"


def _interp_matrix(n_in: int, n_out: int) -> NDArray[np.float32]:
    """(n_out, n_in) 1-D linear interpolation, half-pixel centres, clamped at the edges."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.arange(n_out), lo), 1.0 - (src - lo))
    np.add.at(mat, (np.arange(n_out), hi), src - lo)
    return mat.astype(np.float32)


def mask_input(model: onnx.ModelProto, *, map_size: tuple[int, int],
               input_size: tuple[int, int], layout: str = "NCHW", eps: float = 1e-8
               ) -> onnx.ModelProto:
    """Return a copy whose input is computed as ``images[index] * minmax(upsample(maps))``.

    Score-CAM feeds one masked image per (image, channel) row. Built on the host that is
    ``rows x C x H x W`` floats per pass to copy to the device; here only the small layer maps
    (B, h, w), a row -> image index (B,) and the distinct images (M, C, H, W) are fed, and the
    masks are made by the session: bilinear upsampling with half-pixel centres as two MatMuls
    with constant interpolation matrices (exactly ``cam.upsample_bilinear``), then
    ``(m - min) / (max - min + eps)`` per row, Gather of each row's image, Mul, the transpose
    to NHWC / squeeze to NHW where the model wants it, and a Cast to the input's dtype. These
    nodes go before the existing ones (they feed the old input); ops used exist at opset 7.

    Args:
        model: a model with one image input (not modified).
        map_size: (h, w) of the layer maps; input_size: (H, W) of the model input.
        layout: the model input's layout, ``NCHW``, ``NHWC`` or ``NHW``.
        eps: added to the range in the min-max scaling.

    Returns:
        The copy; inputs ``MASK_IMAGES`` float32 (M, C, H, W), ``MASK_INDEX`` int64 (B,),
        ``MASK_MAPS`` float32 (B, h, w); same outputs, ``ir_version`` and opsets.

    Raises:
        InputError: the model has no single graph input to replace.
    """
    out = _copy(model)
    graph = out.graph
    inits = {t.name for t in graph.initializer}
    real = [v for v in graph.input if v.name not in inits]
    if len(real) != 1:
        raise InputError(f"masking needs a model with one image input, found "
                         f"{[v.name for v in real]}")
    image = real[0]
    build = _Builder()
    mask = _upsampled_mask(build, map_size, input_size, eps, _context(out, None, None).opset)
    masked = build.node("Mul", [build.node("Gather", [MASK_IMAGES, MASK_INDEX], "row_images",
                                           axis=0), mask], "masked")
    masked = _as_model_input(build, masked, layout, input_size,
                             image.type.tensor_type.elem_type)
    build.nodes.append(helper.make_node("Identity", [masked], [image.name],
                                        name=f"featviz/mask/{image.name}"))
    _replace_input(graph, image.name, map_size, input_size, layout)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend([*build.nodes, *old])
    return out


class _Builder:
    """Collects the masking nodes, named ``featviz/mask/<purpose>``."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def const(self, key: str, value: NDArray[np.generic]) -> str:
        name = f"{_CONST}mask/{key}"
        tensor = onnx.numpy_helper.from_array(value, name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def node(self, op: str, inputs: list[str], purpose: str, **attrs: int | list[int]) -> str:
        name = f"featviz/mask/{purpose}"
        made = helper.make_node(op, inputs, [name], name=name)
        made.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attrs.items()))
        self.nodes.append(made)
        return name


def _upsampled_mask(build: _Builder, map_size: tuple[int, int], input_size: tuple[int, int],
                    eps: float, opset: int) -> str:
    """(B, 1, H, W): each map upsampled (two MatMuls) and min-max scaled per row."""
    rows = build.const("rows", _interp_matrix(map_size[0], input_size[0]))
    cols = build.const("cols_t", _interp_matrix(map_size[1], input_size[1]).T.copy())
    up = build.node("MatMul", [build.node("MatMul", [rows, MASK_MAPS], "upsample_rows"), cols],
                    "upsample")
    flat = build.node("Reshape", [up, build.const("flat", np.array([0, -1], np.int64))], "flat")
    if opset < 18:
        lo = build.node("ReduceMin", [flat], "min", axes=[1], keepdims=1)
        hi = build.node("ReduceMax", [flat], "max", axes=[1], keepdims=1)
    else:
        axes = build.const("axes", np.array([1], np.int64))
        lo = build.node("ReduceMin", [flat, axes], "min", keepdims=1)
        hi = build.node("ReduceMax", [flat, axes], "max", keepdims=1)
    span = build.node("Add", [build.node("Sub", [hi, lo], "range"),
                              build.const("eps", np.array(eps, np.float32))], "range_eps")
    mask = build.node("Div", [build.node("Sub", [flat, lo], "shifted"), span], "mask_flat")
    shape = np.array([0, 1, input_size[0], input_size[1]], np.int64)
    return build.node("Reshape", [mask, build.const("shape", shape)], "mask")


def _as_model_input(build: _Builder, masked: str, layout: str, input_size: tuple[int, int],
                    elem: int) -> str:
    """Transpose to NHWC / squeeze to NHW where the model wants it, and cast to its dtype."""
    if layout == "NHWC":
        masked = build.node("Transpose", [masked], "nhwc", perm=[0, 2, 3, 1])
    elif layout == "NHW":
        masked = build.node("Reshape", [masked, build.const("nhw", np.array(
            [0, input_size[0], input_size[1]], np.int64))], "nhw")
    if elem != TensorProto.FLOAT:
        masked = build.node("Cast", [masked], "cast", to=elem)
    return masked


def _replace_input(graph: onnx.GraphProto, image: str, map_size: tuple[int, int],
                   input_size: tuple[int, int], layout: str) -> None:
    """Swap the image input for the images, row index and maps inputs (in place, on the copy)."""
    channels = 1 if layout == "NHW" else None
    kept = [v for v in graph.input if v.name != image]
    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info(MASK_IMAGES, TensorProto.FLOAT,
                                      ["featviz_images", channels, *input_size]),
        helper.make_tensor_value_info(MASK_INDEX, TensorProto.INT64, ["featviz_rows"]),
        helper.make_tensor_value_info(MASK_MAPS, TensorProto.FLOAT, ["featviz_rows", *map_size]),
        *kept])
