"""Plain-data and text views of results (JSON-ready dicts, aligned tables). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from onnx_featviz.structs import InputSpec, Layer, ModelInfo, Prediction, Preprocessing, Shape


def shape_text(shape: Shape | None) -> str:
    """Return ``1x16x28x28`` (symbolic dims by name, unknown as ``?``), or ``?`` when unknown."""
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


def layer_record(layer: Layer) -> dict[str, Any]:
    """Return a JSON-ready dict of one layer."""
    return {
        "index": layer.index, "name": layer.name, "op": layer.op_type, "output": layer.output,
        "shape": None if layer.shape is None else list(layer.shape), "dtype": layer.dtype,
        "params": layer.params, "conv": layer.is_conv, "activation": layer.activation,
        "activation_op": layer.activation_op, "exposable": layer.exposable,
        "reason": layer.reason, "module": layer.module, "layout": layer.layout,
    }


def describe_model(info: ModelInfo, spec: InputSpec, prep: Preprocessing,
                   labels: Sequence[str] | None) -> dict[str, Any]:
    """Return a JSON-ready summary: input spec, preprocessing, outputs, layers, conv layers."""
    return {
        "producer": info.producer, "opset": info.opset, "ir_version": info.ir_version,
        "input": asdict(spec),
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in asdict(prep).items()},
        "outputs": [{"name": o.name, "dtype": o.dtype, "shape": list(o.shape)}
                    for o in info.outputs],
        "labels": len(labels) if labels else 0,
        "params": sum(lay.params for lay in info.layers),
        "layers": [layer_record(lay) for lay in info.layers],
        "conv_layers": [{"name": c.name, "output": c.output, "activation": c.activation,
                         "activation_op": c.activation_op} for c in info.conv_layers],
    }


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return rows as a left-aligned text table with a header line."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    """Return the text shown by ``featviz info``."""
    spec, prep = summary["input"], summary["preprocessing"]
    head = [
        f"input   {spec['name']}  {spec['dtype']}  {spec['layout']}  "
        f"{spec['channels']} channels  {spec['height'] or '?'}x{spec['width'] or '?'}",
        f"prep    preset={prep['preset']} order={prep['channel_order']} scale={prep['scale']:.6g}"
        f" mean={prep['mean']} std={prep['std']} resize={prep['resize']}",
        "outputs " + ", ".join(f"{o['name']} {o['dtype']} {shape_text(tuple(o['shape']))}"
                               for o in summary["outputs"]),
        f"opset {summary['opset']}, IR {summary['ir_version']}, producer "
        f"{summary['producer'] or '?'}, {summary['params']:,} parameters",
        *([f"warning {summary['warning']}"] if summary.get("warning") else []),
        "",
    ]
    rows = [(r["index"], r["name"], r["op"], r["output"], r.get("module") or "",
             shape_text(_shape(r["shape"])), f"{r['params']:,}" if r["params"] else "",
             _mark(r)) for r in summary["layers"]]
    table = format_table(("#", "name", "op", "output", "module", "shape", "params", "conv/act"),
                         rows)
    convs = [f"  {c['name']}: {c['output']} -> {c['activation'] or '(no activation)'}"
             + (f" ({c['activation_op']})" if c["activation_op"] else "")
             for c in summary["conv_layers"]]
    return "\n".join(head) + table + "\n\nconv layers and their activations:\n" + (
        "\n".join(convs) or "  (none)")


def _shape(shape: list[Any] | None) -> Shape | None:
    return None if shape is None else tuple(shape)


def _mark(record: dict[str, Any]) -> str:
    if not record["exposable"]:
        return "not exposable"
    if record["conv"]:
        return "conv -> " + (record["activation"] or "-")
    return ""


def predictions_to_json(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Return ``[{"image", "output", "top": [{"index", "label", "score"}]}]``."""
    return [{"image": p.source, "output": p.output,
             "top": [{"index": c.index, "label": c.label, "score": c.score} for c in p.top]}
            for p in predictions]


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """Return the text shown by ``featviz predict``: one block per image."""
    blocks = []
    for p in predictions:
        note = " (softmax of logits)" if p.softmax_applied else ""
        rows = [(c.index, c.label or "", f"{c.score:.4f}") for c in p.top]
        blocks.append(f"{p.source}  [{p.output}{note}]\n"
                      + format_table(("class", "label", "prob"), rows))
    return "\n\n".join(blocks)
