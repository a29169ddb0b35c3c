"""Module paths of graph nodes (``layer4.1.conv2``) and the tensor each module outputs.

Exporters record where a node came from in one of three ways; the first one present wins:

* torch dynamo (``torch.onnx.export(..., dynamo=True)``): node metadata
  ``pkg.torch.onnx.name_scopes``, a Python list literal such as
  ``['', 'layer4', 'layer4.1', 'layer4.1.relu', 'relu_16']`` (root, fully qualified module
  names, then the FX node name, which is not a module);
* torch TorchScript (``dynamo=False``): node names ``/layer4/layer4.1/relu_1/Relu`` whose
  segments are names relative to an enclosing module (``/layer1/layer1.0/downsample/
  downsample.0/Conv``), with ``_N`` appended to a module called a second time (``relu_1``);
* TensorFlow / Keras (tf2onnx): ``model/block1/conv2d/Conv2D``, where the leading scopes that
  every scoped node shares (``model``, ``StatefulPartitionedCall/model``) name the model, not a
  layer; TFLite-converted graphs name tensors ``a/b/Op;a/b/Op2;...`` and the first ``;`` part,
  the last op applied, is used.

Paths use ``.`` separators, the root module is ``""``. BatchNorm folding moves a fused conv's
node into the BN's scope under dynamo (``layer1.0.bn1``) and keeps it in the conv's scope under
TorchScript, so a conv followed by BN resolves differently between the two exporters.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

from onnx import ModelProto, NodeProto

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_REPEAT = re.compile(r"^(?P<base>.+)_(?P<n>\d+)$")


def node_modules(model: ModelProto) -> dict[str, str]:
    """Map every main-graph node to the module path it was exported from.

    Args:
        model: any ONNX model; not modified.

    Returns:
        node name -> module path, and each output tensor name -> the same path (a tensor key
        wins over a node name that happens to be equal). Nodes whose exporter recorded no scope
        are absent; nodes at the root module map to ``""``.
    """
    nodes = list(model.graph.node)
    paths = _recorded_paths(nodes)
    out: dict[str, str] = {}
    for node, path in zip(nodes, paths, strict=True):
        if path is not None and node.name:
            out[node.name] = path
    for node, path in zip(nodes, paths, strict=True):
        if path is not None:
            out.update({name: path for name in node.output if name})
    return out


def module_outputs(model: ModelProto) -> dict[str, str]:
    """Map every module path prefix to the output tensor of that module.

    A module's output is the last tensor (in graph order) computed by a node inside its scope
    and read by a node outside it, or a graph output. Nodes with no recorded scope take the
    deepest scope shared by their producers and consumers (exporters add such nodes, e.g. the
    ``Split`` of a ``chunk``).

    Args:
        model: any ONNX model; not modified.

    Returns:
        module path (``layer4``, ``layer4.1``, ``features.12``; never ``""``) -> tensor name.
        Modules that computed no node (Identity, Dropout, a conv folded into its BN) are absent.
    """
    nodes = list(model.graph.node)
    paths = _fill_unscoped(nodes, _recorded_paths(nodes))
    readers: dict[str, list[str | None]] = {}
    for node, path in zip(nodes, paths, strict=True):
        for name in node.input:
            readers.setdefault(name, []).append(path)
    graph_outputs = {o.name for o in model.graph.output}
    result: dict[str, str] = {}
    for node, path in zip(nodes, paths, strict=True):
        if not path:
            continue
        for prefix in _prefixes(path):
            for name in node.output:
                if name and (name in graph_outputs or any(
                        not _inside(r, prefix) for r in readers.get(name, []))):
                    result[prefix] = name
    return result


def resolve_module(model: ModelProto, name: str) -> str | None:
    """Return the output tensor of module ``name`` (``layer4.1``; ``/`` also accepted).

    Args:
        model: any ONNX model; not modified.
        name: module path as torch's ``named_modules`` spells it.

    Returns:
        the tensor name, or None when no node of the model belongs to that module.
    """
    key = ".".join(part for part in re.split(r"[./]", name) if part)
    return module_outputs(model).get(key)


def _recorded_paths(nodes: list[NodeProto]) -> list[str | None]:
    """Return each node's module path from metadata, else from its scoped name."""
    meta = [_metadata_path(node) for node in nodes]
    if any(p is not None for p in meta):
        return meta
    names = [_scoped_name(node) for node in nodes]
    if any(n.startswith("/") for n in names if n):
        return _torchscript_paths(names)
    return _tensorflow_paths(names)


def _metadata_path(node: NodeProto) -> str | None:
    """Return the module path in a dynamo node's ``name_scopes`` metadata, or None."""
    for prop in node.metadata_props:
        if prop.key != SCOPES_KEY:
            continue
        try:
            scopes = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            return None
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            return None
        return _join_segments(scopes[1:-1])  # root "" first, the FX node name last
    return None


def _scoped_name(node: NodeProto) -> str:
    """Return the node's name, or for TFLite-converted graphs its first ``;`` part."""
    name = node.name or (node.output[0] if node.output else "")
    return name.split(";")[0]


def _join_segments(segments: Iterable[str]) -> str:
    """Join scope segments into a dotted path, merging segments that repeat the tail of the
    path so far (``layer1.0`` + ``downsample.0`` -> ``layer1.0.downsample.0``)."""
    parts: list[str] = []
    for seg in segments:
        new = [p for p in seg.split(".") if p]
        overlap = 0
        for k in range(min(len(parts), len(new)), 0, -1):
            if parts[len(parts) - k:] == new[:k]:
                overlap = k
                break
        parts += new[overlap:]
    return ".".join(parts)


def _torchscript_paths(names: list[str]) -> list[str | None]:
    """Return module paths of ``/a/a.0/relu_1/Relu`` names, undoing repeat-call suffixes."""
    split = [n.split("/")[1:-1] if n.startswith("/") else None for n in names]
    seen = {(tuple(s[:i]), s[i]) for s in split if s is not None for i in range(len(s))}
    out: list[str | None] = []
    for segs in split:
        if segs is None:
            out.append(None)
            continue
        fixed = []
        for i, seg in enumerate(segs):
            m = _REPEAT.match(seg)
            # ``relu_1`` is a second call of ``relu`` only when ``relu`` exists beside it.
            if m and (tuple(segs[:i]), m["base"]) in seen:
                seg = m["base"]
            fixed.append(seg)
        out.append(_join_segments(fixed))
    return out


def _tensorflow_paths(names: list[str]) -> list[str | None]:
    """Return module paths of ``model/block1/conv2d/Conv2D`` names, minus the model scopes."""
    split = [n.split("/")[:-1] if "/" in n else None for n in names]
    scoped = [s for s in split if s]
    common = 0
    if scoped:
        shortest = min(len(s) for s in scoped)
        while common < shortest - 1 and len({s[common] for s in scoped}) == 1:
            common += 1
    return [None if s is None else ".".join(s[common:]) for s in split]


def _fill_unscoped(nodes: list[NodeProto], paths: list[str | None]) -> list[str | None]:
    """Give each unscoped node the deepest scope shared by its scoped producers and readers."""
    if all(p is None for p in paths):
        return paths
    producer = {o: p for node, p in zip(nodes, paths, strict=True) for o in node.output}
    readers: dict[str, list[str | None]] = {}
    for node, path in zip(nodes, paths, strict=True):
        for name in node.input:
            readers.setdefault(name, []).append(path)
    filled = list(paths)
    for i, node in enumerate(nodes):
        if paths[i] is not None:
            continue
        around = [producer.get(name) for name in node.input]
        around += [r for o in node.output for r in readers.get(o, [])]
        known = [p for p in around if p is not None]
        filled[i] = _common_prefix(known) if known else None
    return filled


def _common_prefix(paths: list[str]) -> str:
    """Return the longest module path that is a prefix of (or equal to) every path."""
    split = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _prefixes(path: str) -> list[str]:
    """Return ``a``, ``a.b``, ``a.b.c`` for ``a.b.c``."""
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _inside(path: str | None, prefix: str) -> bool:
    """Return whether module ``path`` is ``prefix`` or nested in it (None is outside)."""
    return path is not None and (path == prefix or path.startswith(prefix + "."))
