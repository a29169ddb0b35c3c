"""Frozen data types that cross module boundaries (see STYLE.md section 3)."""

from __future__ import annotations

import difflib
import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from onnx_featviz.errors import LayerNotFoundError

Dim = int | str | None
Shape = tuple[Dim, ...]
Activations = Mapping[str, NDArray[np.float32]]
"""Tensor name -> array (batch first, in graph order). Consumers treat it as read-only."""

#: Op types whose output is a "conv layer" (float Conv wrapped in Q/DQ is detected structurally).
CONV_OPS = frozenset({"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"})
#: Element-wise activation ops that may follow a conv (BatchNormalization is folded through).
ACTIVATION_OPS = frozenset(
    {
        "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
        "Gelu", "Elu", "Selu", "Softplus", "Mish", "ThresholdedRelu", "Celu",
    }
)

#: metadata_props keys written by tools/export_torch.py and read by ``preprocess``.
META_PREPROCESS = "featviz.preprocess"
"""JSON object: {"preset": str, "channel_order": "RGB"|"BGR"|"GRAY", "scale": float,
"mean": [float...], "std": [float...], "resize": "crop"|"stretch"|"letterbox",
"size": [H, W], "layout": "NCHW"|"NHWC"}; every key optional."""
META_LABELS = "featviz.labels"
"""JSON list of class names, index = class id."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype name (``"float32"``), shape."""

    name: str
    dtype: str
    shape: Shape


@dataclass(frozen=True, slots=True)
class Layer:
    """One node of the main graph (or of a subgraph, then not exposable).

    ``name`` is the node name (generated as ``<op_type>_<index>`` when empty or duplicated);
    ``output`` is the activation key: the node's first output tensor name. For a conv layer,
    ``activation`` is the output tensor of the activation that follows it (through BN / Q-DQ), or
    ``None``; ``output`` of a QDQ- or QLinear-quantized conv is the float (dequantized) tensor when
    one exists in the graph, and ``raw_output`` the integer tensor.
    """

    index: int
    name: str
    op_type: str
    output: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dtype: str | None
    shape: Shape | None
    params: int = 0
    weight: str | None = None
    bias: str | None = None
    is_conv: bool = False
    activation: str | None = None
    activation_op: str | None = None
    raw_output: str | None = None
    exposable: bool = True
    reason: str | None = None

    @property
    def channels(self) -> int | None:
        """Size of axis 1 (channels of an NCHW tensor) when known."""
        if self.shape is None or len(self.shape) < 2 or not isinstance(self.shape[1], int):
            return None
        return self.shape[1]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What ``catalog.read_catalog`` found in a model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layers: tuple[Layer, ...]
    opset: int
    ir_version: int = 0
    producer: str = ""
    metadata: tuple[tuple[str, str], ...] = field(default=())

    @property
    def conv_layers(self) -> tuple[Layer, ...]:
        """The exposable conv layers in graph order."""
        return tuple(lay for lay in self.layers if lay.is_conv and lay.exposable)

    def layer(self, name: str | int) -> Layer:
        """Return the layer with this node name, output tensor name or index.

        Raises:
            LayerNotFoundError: no such layer; the message lists close matches.
        """
        if isinstance(name, int) or (isinstance(name, str) and name.lstrip("-").isdigit()
                                     and not self._by_name(name)):
            idx = int(name)
            if -len(self.layers) <= idx < len(self.layers):
                return self.layers[idx]
            raise LayerNotFoundError(
                f"layer index {idx} is out of range: the model has {len(self.layers)} layers "
                f"(0..{len(self.layers) - 1}); all layers are in ModelInfo.layers"
            )
        found = self._by_name(name)
        if found:
            return found[0]
        names = list(dict.fromkeys([lay.name for lay in self.layers]
                                   + [t for lay in self.layers for t in lay.outputs]))
        near = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(near)}" if near else "no close matches"
        raise LayerNotFoundError(
            f"no layer or tensor named {name!r} in the model; {hint}; "
            "all names are in ModelInfo.layers (node name, output tensor or index)"
        )

    def __repr__(self) -> str:
        return (f"ModelInfo({len(self.inputs)} inputs, {len(self.outputs)} outputs, "
                f"{len(self.layers)} layers, opset {self.opset}, IR {self.ir_version}, "
                f"producer {self.producer!r})")

    def _repr_html_(self) -> str:
        return html_table(LAYER_HEADER, layer_rows(self.layers))

    def _by_name(self, name: str) -> list[Layer]:
        by_node = [lay for lay in self.layers if lay.name == name]
        if by_node:
            return by_node
        return [lay for lay in self.layers if name in lay.outputs or name == lay.raw_output]


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return a plain HTML table (for notebooks); every cell's text is escaped."""
    cell = 'style="padding:1px 8px;border-bottom:1px solid #ddd;text-align:left"'
    head = "".join(f"<th {cell}>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td {cell}>{html.escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return (f'<table style="border-collapse:collapse;font:12px monospace">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


LAYER_HEADER = ("#", "layer", "op", "output", "shape", "params", "activation")


def layer_rows(layers: Sequence[Layer]) -> list[tuple[object, ...]]:
    """One row per layer: index, name, op, output tensor, shape, params, activation op."""
    def shape(lay: Layer) -> str:
        dims = lay.shape
        return "?" if dims is None else "x".join("?" if d is None else str(d) for d in dims)
    return [(lay.index, lay.name, lay.op_type, lay.output, shape(lay), lay.params,
             lay.activation_op or "") for lay in layers]


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How a model wants its image input.

    ``layout`` is ``"NCHW"`` or ``"NHWC"``; ``height``/``width`` are ``None`` when dynamic;
    ``dtype`` is a numpy dtype name (float32, float16, uint8, int8). ``shape`` is the declared
    input shape (symbolic dims as strings, unknown as ``None``); ``layout`` is ``"NHW"`` for a
    3-D gray input and ``"other"`` (``channels`` 0) for an input that does not take images.
    """

    name: str
    dtype: str
    layout: str
    channels: int
    height: int | None
    width: int | None
    batch: int | None
    shape: Shape = ()


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """Image -> tensor recipe: ``x = (pixels * scale - mean) / std`` per channel, pixels 0..255.

    ``channel_order`` is ``"RGB"``, ``"BGR"`` or ``"GRAY"``; ``resize`` is ``"crop"`` (short side
    to ``size / crop_fraction``, then a center crop of ``size``), ``"stretch"`` or
    ``"letterbox"``; ``size`` is ``(H, W)`` or ``None`` for the model's own size.
    """

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    resize: str = "crop"
    size: tuple[int, int] | None = None
    crop_fraction: float = 1.0
    preset: str = "unit"


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Per-channel statistics over a set of samples; each array has shape ``(C,)``.

    ``count`` is the number of values per channel; ``var`` is the population variance;
    ``zeros`` is the fraction of exact zeros; ``nonfinite`` the count of NaN/Inf values (a
    channel holding any has NaN/Inf in its other statistics). For a tensor made by a Clip,
    ``at_low`` / ``at_high`` are the fractions of values equal to its lower / upper bound
    (None when there is no such constant bound).
    """

    count: int
    mean: NDArray[np.float64]
    var: NDArray[np.float64]
    min: NDArray[np.float64]
    max: NDArray[np.float64]
    zeros: NDArray[np.float64]
    nonfinite: NDArray[np.int64]
    at_low: NDArray[np.float64] | None = None
    at_high: NDArray[np.float64] | None = None

    @property
    def std(self) -> NDArray[np.float64]:
        """Population standard deviation per channel."""
        return np.sqrt(self.var)


@dataclass(frozen=True, slots=True)
class ClassScore:
    """One class of a prediction: index, label (None without labels), probability in [0, 1]."""

    index: int
    label: str | None
    score: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """Top classes for one input; ``output`` is the tensor the scores come from."""

    source: str
    output: str
    top: tuple[ClassScore, ...]
    softmax_applied: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a long job is: ``done`` of ``total`` units (None when unknown) plus a status.

    ``status`` is a short string shown after the bar (e.g. ``"objective 3.21"``).
    """

    done: int
    total: int | None
    unit: str = "step"
    status: str = ""


ProgressFn = Callable[[Progress], None]
"""Callback the api calls as work advances (the CLI draws a bar; the library never prints)."""


def auto_progress(progress: Progress) -> None:
    """Default ``progress=`` of long runs: replaced by a tqdm bar in notebooks and terminals.

    Pass ``None`` for no progress at all, or any ``ProgressFn`` to receive the updates.
    """
