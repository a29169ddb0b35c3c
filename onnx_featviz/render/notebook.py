"""HTML for notebooks (``_repr_html_``): the model card and the layer table, self-contained."""

from __future__ import annotations

from collections.abc import Sequence

from onnx_featviz.structs import (
    LAYER_HEADER,
    InputSpec,
    ModelInfo,
    Preprocessing,
    html_table,
    layer_rows,
)


def _shape(shape: Sequence[object] | None) -> str:
    return "?" if shape is None else "x".join("?" if d is None else str(d) for d in shape)


def layer_table_html(info: ModelInfo) -> str:
    """Return the layer table of a model as HTML (one row per layer, graph order)."""
    return html_table(LAYER_HEADER, layer_rows(info.layers))


def model_card_html(info: ModelInfo, spec: InputSpec, prep: Preprocessing, *,
                    source: str, labels: Sequence[str] | None, provider: str) -> str:
    """Return the model card: inputs, outputs, preprocessing, opset, IR, producer, parameters,
    then the layer table in a collapsed ``<details>`` block.

    ``source`` says where the preprocessing came from (metadata, options, preset default).
    """
    mean = ", ".join(f"{v:g}" for v in prep.mean)
    std = ", ".join(f"{v:g}" for v in prep.std)
    size = _shape(prep.size) if prep.size else "the model's"
    facts = [
        ("input", f"{spec.name}: {spec.dtype} {_shape(spec.shape)} ({spec.layout})"),
        ("outputs", "; ".join(f"{o.name}: {o.dtype} {_shape(o.shape)}" for o in info.outputs)),
        ("preprocessing", f"preset {prep.preset} ({source}): {prep.channel_order}, x * "
                          f"{prep.scale:.6g}, mean ({mean}), std ({std}), {prep.resize} to "
                          f"{size}, crop fraction {prep.crop_fraction:g}"),
        ("labels", f"{len(labels)} classes" if labels else "none"),
        ("opset / IR", f"{info.opset} / {info.ir_version}"),
        ("producer", info.producer or "unknown"),
        ("layers / parameters", f"{len(info.layers)} / {sum(x.params for x in info.layers):,}"),
        ("conv layers", str(len(info.conv_layers))),
        ("provider", provider),
    ]
    card = html_table(("model", ""), facts)
    return (f"<div>{card}<details><summary>layer table ({len(info.layers)} layers)</summary>"
            f"{layer_table_html(info)}</details></div>")
