"""``Inspector``: a model, its preprocessing and the onnxruntime sessions that serve it; capture,
stream, predict and activations. Nothing method-specific: CAMs, audits and synthesis build on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import onnx
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.graph.catalog as catalog
import onnx_featviz.graph.rewrite as rewrite
import onnx_featviz.graph.weights as weights
import onnx_featviz.io.files as fileio
import onnx_featviz.io.preprocess as preprocess
import onnx_featviz.runtime as runtime
from onnx_featviz.errors import InputError, ModelError
from onnx_featviz.graph import reductions
from onnx_featviz.io import external as model_files
from onnx_featviz.io import limits
from onnx_featviz.io.batches import (
    ImageSource,
    _plan_passes,
    _sample_bytes,
    _to_host,
    load_images,
    plan_groups,
    row_sources,
)
from onnx_featviz.render import notebook
from onnx_featviz.structs import (
    META_LABELS,
    ClassScore,
    InputSpec,
    Layer,
    ModelInfo,
    Prediction,
    Preprocessing,
)

ModelSource = str | Path | bytes | onnx.ModelProto




Images = Sequence[ImageSource] | NDArray[np.generic] | ImageSource


STAGES = ("conv", "act", "both")


#: Largest probe batch ``Inspector.info`` runs to find missing shapes (values, any dtype).
_MAX_EXAMPLE_ELEMENTS = 2**27


log = logging.getLogger(__name__)


#: A model file with more external data than this keeps its large tensors on disk: onnxruntime
#: reads them for every session (plain or rewritten), so no rewrite copies the weights.
KEEP_EXTERNAL_MODEL_BYTES = 64 * 2**20


#: External tensors up to this size (shapes, scales, biases) are loaded into memory anyway.
KEEP_EXTERNAL_TENSOR_BYTES = 2**20


_T = TypeVar("_T")


_I = TypeVar("_I", bound="Inspector")


@dataclass(frozen=True, slots=True)
class PrepOptions:
    """Overrides of the model's preprocessing; ``None`` keeps what the model or preset says."""

    preset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    channel_order: str | None = None
    size: tuple[int, int] | None = None
    resize: str | None = None
    crop_fraction: float | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A model-ready input batch and where each item came from."""

    array: NDArray[np.generic]
    sources: tuple[str, ...]
    images: tuple[Image.Image, ...] = ()
    originals: tuple[Image.Image, ...] = ()

    def __repr__(self) -> str:
        return (f"Batch({self.array.dtype} {'x'.join(map(str, self.array.shape))}, "
                f"{len(self.sources)} sources, {len(self.images)} pictures)")


def load_model(model: ModelSource) -> onnx.ModelProto:
    """Return a ``ModelProto`` for a path, serialized bytes or a proto (never modified)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return model_files.load_model(model)


class Inspector:
    """A model plus the onnxruntime sessions that serve it; use as a context manager.

    Args:
        model: path, serialized bytes or ``ModelProto`` (not modified).
        provider: ``"auto"``, ``"cuda"`` or ``"cpu"``.
        prep: preprocessing overrides (default: the model's metadata, else a per-input default).
        max_batch: largest batch sent to onnxruntime in one call.
        labels: class names, or the path of a text file with one per line (default: the
            model's ``featviz.labels`` metadata when present).
        transfer: ``"float32"``, or ``"float16"`` to move exposed float32 tensors off the
            device as float16 (half the bytes; returned as float32, exact to float16 rounding).
        name: how onnxruntime errors name the model (default: its file name).

    Raises:
        ModelError: unreadable model; ProviderError: provider not usable.
    """

    def __init__(self, model: ModelSource, provider: str = "auto", *,
                 prep: PrepOptions | None = None, max_batch: int | None = 32,
                 labels: Sequence[str] | str | Path | None = None,
                 transfer: str = "float32", name: str | None = None) -> None:
        if transfer not in ("float32", "float16"):
            raise InputError(f"unknown transfer dtype {transfer!r}; choose float32 or float16")
        self.model_path = Path(model) if isinstance(model, str | Path) else None
        self.model, self.external_folder = _load_for_sessions(model, self.model_path)
        self.name = name or (f"model {Path(model).name}" if isinstance(model, str | Path)
                             else "the model")
        self.transfer = transfer
        self.provider = provider
        self.max_batch = max_batch
        self.spec: InputSpec = preprocess.infer_input_spec(self.model)
        self.preprocessing: Preprocessing = _resolve_prep(self.model, self.spec, prep)
        self.labels: tuple[str, ...] | None = (
            read_labels(Path(labels)) if isinstance(labels, str | Path)
            else tuple(labels) if labels is not None else _model_labels(self.model))
        self.prep_source = _prep_source(self.model, prep)
        self._assumed = self.prep_source.startswith("assumed")  # said once, on the first image
        self._sessions: dict[Hashable, Any] = {}
        self._info: ModelInfo | None = None
        runtime.resolve_providers(provider)

    def __enter__(self: _I) -> _I:
        return self

    def __repr__(self) -> str:
        spec, prep = self.spec, self.preprocessing
        return (f"{type(self).__name__}({self.model.graph.name or 'model'!r}, input "
                f"{spec.name} {spec.layout} {'x'.join(map(str, spec.shape))}, "
                f"{len(self.model.graph.node)} nodes, preset {prep.preset} "
                f"({self.prep_source}), provider {self.provider!r})")

    def _repr_html_(self) -> str:
        return notebook.model_card_html(
            self.info, self.spec, self.preprocessing, source=self.prep_source,
            labels=self.labels, provider=self.provider)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release every session this inspector opened."""
        for value in self._sessions.values():
            if isinstance(value, runtime.Session):
                value.close()
        self._sessions.clear()

    def open_session(self, model: onnx.ModelProto, *, spinning: bool = True
                     ) -> runtime.Session:
        """Open a session (the caller owns it) on ``model``, a rewrite of ``self.model``.

        Weights this inspector left on disk are read from the model's folder.
        """
        return runtime.Session(model, self.provider, spinning=spinning, name=self.name,
                               external_folder=self.external_folder)

    def cached(self, key: Hashable, build: Callable[[], _T]) -> _T:
        """Return what ``build()`` made for ``key``, building it once per inspector.

        Capability packages keep their sessions (and the models behind them) here, so they live
        exactly as long as the inspector; ``close`` closes every cached ``runtime.Session``.
        """
        if key not in self._sessions:
            self._sessions[key] = build()
        value: _T = self._sessions[key]
        return value

    # -- model description -------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """The layer catalog; shapes inference cannot give come from one real run."""
        if self._info is None:
            info = _read_catalog(self)
            missing = [lay.output for lay in info.layers if lay.exposable and lay.shape is None
                       and lay.output]
            if missing:
                info = _fill_shapes(self, missing)
            self._info = info
        return self._info

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Every layer in graph order."""
        return self.info.layers

    def layer(self, name: str | int) -> Layer:
        """Return a layer by node name, output tensor name or index (close matches on error)."""
        return self.info.layer(name)

    # -- inputs --------------------------------------------------------------------------
    def load_batch(self, images: Images) -> Batch:
        """Turn image paths, PIL images, ``.npy``/``.npz`` paths or an array into a batch.

        Returns:
            ``Batch`` whose array fits the model input (layout, size, dtype).

        Raises:
            InputError: unreadable image, wrong channel count, wrong array shape.
        """
        if isinstance(images, np.ndarray):
            checked = preprocess.check_batch(images, self.spec)
            return Batch(checked, row_sources("array", len(checked)))
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        if not items:
            raise InputError("no images were given; pass at least one image path or array")
        arrays, sources, pics, originals = load_images(items, self.spec, self.preprocessing)
        if pics and self._assumed:
            self._assumed = False  # say it once per inspector
            log.warning("model input %r has no preprocessing metadata and none was given: "
                        "assuming preset %r; if the model was trained with another recipe, "
                        "choose a preset (%s)", self.spec.name, self.preprocessing.preset,
                        ", ".join(preprocess.PRESETS), extra={"after_success": True})
        return Batch(np.concatenate(arrays), tuple(sources), tuple(pics), tuple(originals))

    def display(self, image: Image.Image) -> Image.Image:
        """Return the image resized and cropped as the model sees it, un-normalized (RGB)."""
        return preprocess.display_image(image, self.spec, self.preprocessing)

    # -- running -------------------------------------------------------------------------
    def session(self, tensors: Sequence[str] = (), *, stats: bool = False) -> runtime.Session:
        """Return (opening once) a session whose outputs include ``tensors``.

        With ``stats=True`` the session instead outputs the per-channel reductions of
        ``tensors`` (see ``reductions.append_channel_stats``).
        """
        key = ("stats" if stats else "expose", tuple(tensors))
        if key not in self._sessions:
            model = self.model
            if stats:
                model = reductions.append_channel_stats(self.model, list(key[1]))
            elif key[1]:
                model = rewrite.expose_tensors(self.model, list(key[1]),
                                               float16=self.transfer == "float16")
            self._sessions[key] = self.open_session(model)
        session: runtime.Session = self._sessions[key]
        return session

    def run(self, batch: NDArray[np.generic], tensors: Sequence[str], *,
             exposed: Sequence[str] | None = None) -> dict[str, NDArray[np.generic]]:
        """Fetch ``tensors`` from the session that exposes ``exposed`` (default: the same)."""
        session = self.session(tuple(exposed if exposed is not None else tensors))
        wanted = [exposed_name(session, t) for t in tensors]
        values = session.run({self.spec.name: batch}, wanted, max_batch=self.max_batch)
        return {t: values[w] for t, w in zip(tensors, wanted, strict=True)}

    def outputs(self, images: Images) -> dict[str, NDArray[np.generic]]:
        """Run the unmodified model and return its own outputs."""
        batch = self.load_batch(images).array
        session = self.session()
        return session.run({self.spec.name: batch}, max_batch=self.max_batch)

    def predict(self, images: Images, top_k: int = 5) -> list[Prediction]:
        """Return the top-k classes per input with probabilities (softmax applied to logits).

        Raises:
            InputError: ``top_k`` < 1; ModelError: the model has no classifier-like output.
        """
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        loaded = self.load_batch(images)
        if not self.info.outputs:
            raise ModelError("the model has no graph output to read scores from; export it "
                             "with its classifier output")
        output = self.info.outputs[0].name
        scores = self.session().run({self.spec.name: loaded.array}, [output],
                                    max_batch=self.max_batch)[output]
        probs, applied = as_probabilities(np.asarray(scores, np.float64).reshape(len(scores), -1))
        return [prediction(self.labels, src, output, row, top_k, applied)
                for src, row in zip(loaded.sources, probs, strict=True)]

    def layer_tensors(self, layers: Sequence[str | int] | None = None, stage: str = "conv"
                      ) -> list[str]:
        """Resolve layer names/indices (default: every conv layer) to tensors for a stage.

        Args:
            layers: node names, tensor names or indices; None for all conv layers.
            stage: ``"conv"`` (the layer's output), ``"act"`` (its activation) or ``"both"``.
        """
        return layer_tensors(self.info, layers, stage)

    def activations(self, images: Images, layers: Sequence[str | int] | None = None, *,
                    stage: str = "conv", float32: bool = True,
                    max_bytes: int | None = None) -> dict[str, NDArray[np.generic]]:
        """Return the tensors of ``layers`` (default: every conv) for the inputs, in graph order.

        Args:
            images: image paths, PIL images, .npy/.npz paths or a model-ready array.
            layers: node names, tensor names or indices.
            stage: ``"conv"``, ``"act"`` or ``"both"`` (see ``layer_tensors``).
            float32: convert float16 tensors to float32 (int8 tensors are returned dequantized).
            max_bytes: bound on the bytes one onnxruntime pass may produce (None: no bound).

        Returns:
            Tensor name -> array (N, ...) exactly as the model computed it.
        """
        batch = self.load_batch(images).array
        return self.capture(batch, self.layer_tensors(layers, stage), float32=float32,
                            max_bytes=max_bytes)

    def capture(self, batch: NDArray[np.generic], tensors: Sequence[str], *,
                float32: bool = True, max_bytes: int | None = None
                ) -> dict[str, NDArray[np.generic]]:
        """Return ``tensors`` (names, not layers) for a model-ready batch, in the order given."""
        parts: dict[str, list[NDArray[np.generic]]] = {t: [] for t in tensors}
        for _, group in self.stream(batch, tensors, float32=float32, max_bytes=max_bytes):
            for name, value in group.items():
                parts[name].append(value)
        # one pass (the usual case) needs no copy
        return {t: parts[t][0] if len(parts[t]) == 1 else np.concatenate(parts[t])
                for t in tensors}

    def stream(self, batch: NDArray[np.generic], tensors: Sequence[str], *, float32: bool = True,
               max_bytes: int | None = None
               ) -> Iterator[tuple[slice, dict[str, NDArray[np.generic]]]]:
        """Yield ``(batch_slice, {tensor: array})`` groups whose bytes stay under ``max_bytes``.

        The batch is split into chunks so that one pass never holds more than ``max_bytes`` of
        exposed tensors (counted twice: onnxruntime's buffers and the returned arrays). When one
        sample alone exceeds the bound, the tensors are split into
        groups that each run in their own short-lived session (onnxruntime allocates every graph
        output of a session on each pass, fetched or not); all chunks of a group come before the
        next group.
        """
        sizes = _sample_bytes(self.info, tensors)
        plan = _plan_passes(tensors, sizes, len(batch), max_bytes, self.max_batch)
        _check_pass_memory(plan, sizes, len(batch))
        if len(plan_groups(plan)) == 1:
            for rows, group in plan:
                values = self.run(batch[rows], group)
                yield rows, {t: _to_host(values[t], float32) for t in group}
            return
        yield from _stream_groups(self, batch, plan, float32)

    def filters(self, layer: str | int) -> weights.Filters:
        """Return the float32 filters ``(O, I/groups, kH, kW)`` and bias of a conv layer."""
        if self.external_folder is not None and self.model_path is not None:
            return weights.read_filters(model_files.load_model(self.model_path), self.layer(layer))
        return weights.read_filters(self.model, self.layer(layer))


def prediction(labels: Sequence[str] | None, source: str, output: str,
               probs: NDArray[np.float64], top_k: int, applied: bool) -> Prediction:
    """The ``top_k`` classes of one row of probabilities, labelled when ``labels`` fit."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    names = labels if labels and len(labels) == len(probs) else None
    top = tuple(ClassScore(int(i), names[i] if names else None, float(probs[i])) for i in order)
    return Prediction(source, output, top, applied)


def expand_images(paths: Sequence[Path]) -> list[Path]:
    """Return the image files named by ``paths`` (folders searched recursively)."""
    return [image for path in paths for image in fileio.list_images(path)]


# -- helpers ------------------------------------------------------------------------------
def _resolve_prep(model: onnx.ModelProto, spec: InputSpec,
                  prep: PrepOptions | None) -> Preprocessing:
    opts = prep or PrepOptions()
    return preprocess.resolve_preprocessing(
        spec, preset=opts.preset, base=preprocess.read_preprocessing(model), mean=opts.mean,
        std=opts.std, scale=opts.scale, channel_order=opts.channel_order, size=opts.size,
        resize=opts.resize, crop_fraction=opts.crop_fraction)


def _prep_source(model: onnx.ModelProto, prep: PrepOptions | None) -> str:
    """Say where the preprocessing came from: options, the model's metadata, or a default."""
    if prep is not None and prep != PrepOptions():
        return "from options"
    if preprocess.read_preprocessing(model) is not None:
        return "from the model's metadata"
    return "assumed: no metadata or options"


def _model_labels(model: onnx.ModelProto) -> tuple[str, ...] | None:
    for prop in model.metadata_props:
        if prop.key == META_LABELS:
            try:
                value: Any = json.loads(prop.value)
            except (json.JSONDecodeError, RecursionError) as err:
                raise ModelError(f"metadata {META_LABELS!r} is not a JSON list of class names: "
                                 f"{str(err)[:100]}; fix or remove it") from err
            if not isinstance(value, list) or not all(
                    isinstance(v, str | int | float) for v in value):
                raise ModelError(f"metadata {META_LABELS!r} must be a JSON list of class names, "
                                 f"got {prop.value[:60]!r}; fix or remove it")
            return tuple(str(v) for v in value)
    return None


def read_labels(path: Path) -> tuple[str, ...]:
    """Read class names, one per line (index = class id); ``synset`` lines keep their text."""
    fileio.require_file(path, "labels file", "give a text file with one class name per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read labels file {path}: {err}; give a text file with one "
                         "class name per line") from err
    return tuple(line.strip() for line in lines if line.strip())


def _example_shape(spec: InputSpec, prep: Preprocessing) -> tuple[int, ...]:
    h = spec.height or (prep.size[0] if prep.size else 224)
    w = spec.width or (prep.size[1] if prep.size else 224)
    if spec.layout == "NHWC":
        return (1, h, w, spec.channels)
    if spec.layout == "NHW":
        return (1, h, w)
    if spec.layout == "other":  # not an image input: symbolic dims count as 1
        return tuple(d if isinstance(d, int) else 1 for d in spec.shape)
    return (1, spec.channels, h, w)


def exposed_name(session: runtime.Session, tensor: str) -> str:
    for name in (rewrite.dequantized_name(tensor), rewrite.float16_name(tensor)):
        if name in session.output_names:
            return name
    return tensor


def check_exposable(layer: Layer) -> None:
    if not layer.exposable:
        raise ModelError(f"layer {layer.name!r} cannot be exposed: {layer.reason}; "
                         "choose a layer of the main graph")


def stage_tensors(layer: Layer, stage: str) -> list[str]:
    act = layer.activation or layer.output
    if stage == "conv" or not layer.is_conv:
        return [layer.output]
    if stage == "act":
        return [act]
    return [layer.output] if act == layer.output else [layer.output, act]


def module_tensor(info: ModelInfo, name: str | int) -> str | None:
    """Return the output tensor when ``name`` is a module path (not a node or tensor name)."""
    if not isinstance(name, str):
        return None
    if any(lay.name == name or name in lay.outputs for lay in info.layers):
        return None
    return info.module_output(name)


def spatial_size(shape: Sequence[int | str | None] | None, layout: str | None = None) -> int:
    """Known h*w of an (N, C, h, w) shape, or (N, h, w, C) for layout ``NHWC``; 0 when unknown
    (dynamic), 1 without spatial dims."""
    if shape is None or len(shape) < 3:
        return 1
    dims = shape[1:-1] if layout == "NHWC" else shape[2:]
    if not all(isinstance(d, int) for d in dims):
        return 0
    return int(np.prod([int(d) for d in dims if isinstance(d, int)]))


def as_probabilities(scores: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
    rows_sum = scores.sum(axis=1)
    if np.all(scores >= 0) and np.allclose(rows_sum, 1.0, atol=1e-2):
        return scores, False
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True), True


def _load_for_sessions(model: ModelSource, path: Path | None
                       ) -> tuple[onnx.ModelProto, Path | None]:
    """Load the model; a file with much external data keeps its large tensors on disk.

    Returns:
        The proto and the folder sessions read the kept tensors from (None: all loaded).
    """
    if path is None:
        return load_model(model), None
    proto = model_files.load_model(path, keep_external_over=KEEP_EXTERNAL_TENSOR_BYTES)
    if model_files.external_total(proto) > KEEP_EXTERNAL_MODEL_BYTES:
        return proto, path.absolute().parent.resolve()
    model_files.load_external(proto, path)  # our own fresh proto
    return proto, None


def _read_catalog(inspector: Inspector, **given: Mapping[str, Any]) -> ModelInfo:
    """Read the catalog; symbolic input dims are fixed to the example input on a copy.

    With dynamic batch, height or width, shape inference on a copy whose input has the
    concrete size the inspector feeds gives every layer concrete dims (layer choice and
    spatial checks need them); the inputs keep their declared symbolic shape.
    """
    model, spec = inspector.model, inspector.spec
    declared = catalog.read_catalog(model, **given)
    if all(isinstance(d, int) for d in spec.shape) or not spec.shape:
        return declared
    example = _example_shape(spec, inspector.preprocessing)
    concrete = catalog.read_catalog(rewrite.fix_input_shape(model, spec.name, example), **given)
    return replace(concrete, inputs=declared.inputs)


def layer_tensors(info: ModelInfo, layers: Sequence[str | int] | None, stage: str
                  ) -> list[str]:
    """Tensors of ``layers`` (module paths too; default: every conv layer) for a stage."""
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    chosen = info.conv_layers if layers is None else [info.layer(n) for n in layers]
    if layers is None and not chosen:
        raise InputError("the model has no conv layers; name layers explicitly "
                         "(all names are in ModelInfo.layers)")
    named = [None] * len(chosen) if layers is None else [module_tensor(info, n) for n in layers]
    tensors: list[str] = []
    for lay, module in zip(chosen, named, strict=True):
        check_exposable(lay)
        for tensor in [module] if module else stage_tensors(lay, stage):
            if tensor not in tensors:
                tensors.append(tensor)
    return tensors


def _stream_groups(inspector: Inspector, batch: NDArray[np.generic],
                   plan: Sequence[tuple[slice, list[str]]], float32: bool
                   ) -> Iterator[tuple[slice, dict[str, NDArray[np.generic]]]]:
    """Run each group of tensors in its own short-lived session, chunk by chunk."""
    for group, chunks in plan_groups(plan):
        with inspector.open_session(rewrite.expose_tensors(inspector.model, group)) as s:
            wanted = [exposed_name(s, t) for t in group]
            for rows in chunks:
                values = s.run({inspector.spec.name: batch[rows]}, wanted)
                yield rows, {t: _to_host(values[w], float32)
                             for t, w in zip(group, wanted, strict=True)}


def _fill_shapes(inspector: Inspector, tensors: list[str]) -> ModelInfo:
    """Catalog with the shapes one zero-input run gives (inference could not)."""
    shape = _example_shape(inspector.spec, inspector.preprocessing)
    if int(np.prod(shape, dtype=np.float64)) > _MAX_EXAMPLE_ELEMENTS:
        # a declared dim such as 10**9 would make the probe batch terabytes big
        log.warning("not running the model to find shapes: its input %s would need %s "
                    "values", inspector.spec.name, shape)
        return catalog.read_catalog(inspector.model)
    batch = np.zeros(shape, inspector.spec.dtype)
    try:
        values = inspector.run(batch, tensors)
    except (ModelError, InputError):
        return _read_catalog(inspector)
    shapes = {k: tuple(int(d) for d in v.shape) for k, v in values.items()}
    dtypes = {k: str(v.dtype) for k, v in values.items()}
    return _read_catalog(inspector, shapes=shapes, dtypes=dtypes)


def _check_pass_memory(plan: Sequence[tuple[slice, list[str]]], sizes: Mapping[str, int],
                       total: int) -> None:
    """Refuse, before running, a pass whose exposed tensors (sizes from the model's dims) would
    not fit in memory: onnxruntime's buffers and the returned arrays, so twice their bytes."""
    passes = [(len(range(*rows.indices(total))), group) for rows, group in plan]
    if not passes:
        return
    rows, group = max(passes, key=lambda p: p[0] * sum(sizes[t] for t in p[1]))
    shown = ", ".join(group[:3]) + (f" and {len(group) - 3} more" if len(group) > 3 else "")
    limits.check_allocation((2, rows, sum(sizes[t] for t in group)), 1,
                            f"the exposed tensors {shown} (twice: runtime and result)")
