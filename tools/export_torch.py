"""Export a torch module to ONNX with readable layer names and featviz metadata.

The legacy (TorchScript) exporter names nodes after the module scope that emitted them, e.g.
``/layer1/layer1.0/conv1/Conv``. ``export_module`` renames every such node to the module's
attribute path (``layer1.0.conv1``) and, where safe, its output tensor too, so that ``conv1`` is
both the node and the activation a user asks for. It also writes the preprocessing recipe and class
labels as ``metadata_props`` that ``onnx_featviz`` reads back.

Example::

    from tools.export_torch import export_module
    export_module(net, torch.zeros(1, 3, 32, 32), "net.onnx",
                  preprocess={"preset": "unit", "channel_order": "RGB"}, labels=classes)

torch is the optional ``train`` extra: this file imports it, the package never does.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from onnx_featviz.structs import META_LABELS, META_PREPROCESS

logger = logging.getLogger(__name__)

#: onnxruntime 1.31 reads ONNX IR versions up to this one.
MAX_IR_VERSION = 13
#: Keys allowed in the preprocessing metadata (see ``onnx_featviz.structs.META_PREPROCESS``).
PREPROCESS_KEYS = frozenset(
    {"preset", "channel_order", "scale", "mean", "std", "resize", "size", "layout"}
)


def export_module(
    module: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    layer_names: bool = True,
    preprocess: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    opset: int = 13,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``module`` (in eval mode) to an ONNX file with named layers and metadata.

    Args:
        module: the network; exported in eval mode, its own training flag is left as it was.
        example_input: one example batch, e.g. float32 ``(1, C, H, W)``.
        path: where to write the ``.onnx`` file (written atomically; folders are created).
        input_name: name of the graph input.
        output_name: name of the graph output.
        layer_names: rename nodes (and their output tensors) to module paths such as ``conv1``.
        preprocess: recipe stored as JSON under ``META_PREPROCESS`` (keys in ``PREPROCESS_KEYS``).
        labels: class names stored as a JSON list under ``META_LABELS`` (index = class id).
        opset: ONNX opset to export with.
        dynamic_batch: make axis 0 of the input and output symbolic (``"batch"``).

    Returns:
        The path written.

    Raises:
        ValueError: unknown preprocessing keys or non-string labels.
    """
    metadata = _metadata(preprocess, labels)
    model = _torch_export(module, example_input, input_name, output_name, opset, dynamic_batch)
    if layer_names:
        model = name_layers(model, module)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model)
    return _save_atomic(model.SerializeToString(), Path(path))


def _metadata(
    preprocess: Mapping[str, Any] | None, labels: Sequence[str] | None
) -> dict[str, str]:
    """Validate and serialize the metadata values (JSON, sorted keys for stable bytes)."""
    out: dict[str, str] = {}
    if preprocess is not None:
        unknown = sorted(set(preprocess) - PREPROCESS_KEYS)
        if unknown:
            raise ValueError(
                f"unknown preprocessing keys {unknown}; use only {sorted(PREPROCESS_KEYS)}"
            )
        out[META_PREPROCESS] = json.dumps(dict(preprocess), sort_keys=True)
    if labels is not None:
        if isinstance(labels, str) or not all(isinstance(lab, str) for lab in labels):
            raise ValueError(
                f"labels must be a sequence of strings, got {labels!r:.80}; "
                "pass e.g. [str(i) for i in range(10)]"
            )
        out[META_LABELS] = json.dumps(list(labels))
    return out


def _torch_export(
    module: nn.Module,
    example_input: torch.Tensor,
    input_name: str,
    output_name: str,
    opset: int,
    dynamic_batch: bool,
) -> onnx.ModelProto:
    """Run the legacy torch exporter into memory and parse the result."""
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is deliberate (onnxscript, which the dynamo exporter needs, is not
        # a dependency); its deprecation notice says nothing actionable to the caller.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        _legacy_export(module, example_input, buffer, input_name, output_name, opset, axes)
    return onnx.load_from_string(buffer.getvalue())


def _legacy_export(
    module: nn.Module,
    example_input: torch.Tensor,
    buffer: io.BytesIO,
    input_name: str,
    output_name: str,
    opset: int,
    axes: dict[str, dict[int, str]] | None,
) -> None:
    """Call ``torch.onnx.export`` with the TorchScript exporter, writing into ``buffer``."""
    torch.onnx.export(
        module,
        (example_input,),
        buffer,  # type: ignore[arg-type]  # the legacy exporter accepts file objects
        dynamo=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes=axes,
    )


def name_layers(model: onnx.ModelProto, module: nn.Module) -> onnx.ModelProto:
    """Return a copy of ``model`` with nodes and their outputs named after ``module``'s layers.

    A node from scope ``/layer1/layer1.0/conv1/Conv`` becomes ``layer1.0.conv1``. When one leaf
    module emitted several nodes, the one using the module's own parameters (else the last one)
    keeps the module path and the others become ``<path>/<op part>`` (``fc1/Flatten``). Nodes
    emitted by a container module's own code (an ``Add`` in a residual block) are always
    ``<path>/<op part>`` (``layer1.0/Add``), since the bare path would suggest the block's output.
    Unscoped nodes keep the exporter's name without the leading slash. Output tensors are
    renamed to the node name (extra outputs ``<name>/output_<i>``) unless they are graph
    inputs/outputs or initializers, or the name is already taken. Names are unique and depend
    only on the graph and the module.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    known = frozenset(name for name, _ in module.named_modules() if name)
    leaves = frozenset(name for name, sub in module.named_modules() if not any(sub.children()))
    graph = out.graph
    names = _unique(_proposed_names(graph, known, leaves))
    for node, name in zip(graph.node, names, strict=True):
        node.name = name
    _rename_tensors(graph, _tensor_renames(graph))
    return out


def _proposed_names(
    graph: onnx.GraphProto, known: frozenset[str], leaves: frozenset[str]
) -> list[str]:
    """One proposed name per node (possibly duplicated; ``_unique`` resolves that)."""
    params = {init.name for init in graph.initializer}
    scoped: list[tuple[str, str] | None] = []
    for node in graph.node:
        parts = node.name.strip("/").split("/")
        scoped.append((_module_path(parts[:-1], known), parts[-1])
                      if node.name.startswith("/") and len(parts) > 1 else None)
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(scoped):
        if item is not None and item[0] in leaves:
            groups.setdefault(item[0], []).append(index)
    main = {path: _main_node(graph, members, path, params) for path, members in groups.items()}
    names = []
    for index, (node, item) in enumerate(zip(graph.node, scoped, strict=True)):
        if item is None:
            names.append(node.name.strip("/") or f"{node.op_type}_{index}")
        else:
            names.append(item[0] if main.get(item[0]) == index else f"{item[0]}/{item[1]}")
    return names


def _module_path(scopes: Sequence[str], known: frozenset[str]) -> str:
    """Turn exporter scope parts (``["layer1", "layer1.0", "conv1"]``) into ``layer1.0.conv1``.

    The exporter writes each scope either relative to its parent (``conv1``) or as the full
    path (``layer1.0``); parts naming no module (functional code) are joined as they are.
    """
    path = ""
    for part in scopes:
        nested = f"{path}.{part}" if path else part
        if nested not in known and part in known and (not path or part.startswith(path + ".")):
            nested = part
        path = nested
    return path


def _main_node(graph: onnx.GraphProto, members: list[int], path: str, params: set[str]) -> int:
    """Index of the node that keeps the bare module path: the one reading its parameters."""
    prefix = f"{path}."
    own = [
        index
        for index in members
        if any(name in params and name.startswith(prefix) for name in graph.node[index].input)
    ]
    return own[0] if len(own) == 1 else members[-1]


def _unique(names: Sequence[str]) -> list[str]:
    """Make names unique in order: later duplicates get ``_1``, ``_2``, ..."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, count = name, 0
        while candidate in seen:
            count += 1
            candidate = f"{name}_{count}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _tensor_renames(graph: onnx.GraphProto) -> dict[str, str]:
    """Old -> new tensor names: node outputs take their node's name where that is safe."""
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output}
    fixed |= {init.name for init in graph.initializer}
    taken = set(fixed) | {name for node in graph.node for name in node.output}
    renames: dict[str, str] = {}
    for node in graph.node:
        for index, old in enumerate(node.output):
            new = node.name if index == 0 else f"{node.name}/output_{index}"
            if not old or old in fixed or new == old or new in taken:
                continue
            renames[old] = new
            taken.add(new)
    return renames


def _rename_tensors(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    """Apply ``renames`` in place to a graph the caller owns, subgraph inputs included."""
    for node in graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
    for current in _graphs(graph):
        for node in current.node:
            node.input[:] = [renames.get(name, name) for name in node.input]
    for value in graph.value_info:
        value.name = renames.get(value.name, value.name)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _graphs(sub)


def _save_atomic(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; give the result the usual 0644 (or the old file's mode).
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%d bytes)", path, len(data))
    return path
