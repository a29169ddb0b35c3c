"""Image sources to model-ready rows, and the planning of how many rows and which exposed
tensors one onnxruntime pass may hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.io.files as fileio
import onnx_featviz.io.preprocess as preprocess
from onnx_featviz.structs import (
    InputSpec,
    ModelInfo,
    Preprocessing,
)


def _load_item(item: ImageSource, spec: InputSpec, prep: Preprocessing
               ) -> Iterator[tuple[str, NDArray[np.generic],
                                   tuple[Image.Image, Image.Image] | None]]:
    """Yield (source, model-ready rows, (display picture, original) or None) per image."""
    if isinstance(item, Image.Image):
        yield ("image", preprocess.images_to_batch([item], spec, prep),
               (preprocess.display_image(item, spec, prep), item))
        return
    path = Path(item)
    if path.is_dir():  # every image below it, as the command line takes folders
        for image_path in fileio.list_images(path):
            yield from _load_item(image_path, spec, prep)
        return
    if path.suffix.lower() in (".npy", ".npz"):
        for key, array in fileio.load_array_file(path).items():
            yield f"{path}:{key}", preprocess.check_batch(array, spec), None
        return
    image = fileio.load_image(path)
    yield (str(path), preprocess.images_to_batch([image], spec, prep),
           (preprocess.display_image(image, spec, prep), image))


def _sample_bytes(info: ModelInfo, tensors: Sequence[str]) -> dict[str, int]:
    """Bytes one sample of each tensor takes as float32 (0 where a dim is unknown)."""
    out = {}
    for tensor in tensors:
        lay = info.layer(tensor)
        shape = lay.shape if tensor == lay.output else None
        known = [d for d in (shape or ())[1:] if isinstance(d, int)]
        out[tensor] = int(np.prod(known)) * 4 if shape and len(known) == len(shape) - 1 else 0
    return out


def row_sources(source: str, rows: int) -> tuple[str, ...]:
    """One source name per batch row: ``source`` itself, or ``source[i]`` for several rows."""
    return (source,) if rows == 1 else tuple(f"{source}[{i}]" for i in range(rows))


def _to_host(value: NDArray[np.generic], float32: bool) -> NDArray[np.generic]:
    if float32 and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


def _plan_passes(tensors: Sequence[str], sizes: Mapping[str, int], total: int,
                 max_bytes: int | None, max_batch: int | None
                 ) -> list[tuple[slice, list[str]]]:
    """Split rows into chunks (and, if one sample is too big, tensors into groups).

    Returns:
        ``(rows, tensors)`` passes, group-major, each producing at most ``max_bytes`` when a
        single sample of a single tensor fits in it.
    """
    step = max_batch or total or 1
    # A pass briefly holds its outputs twice: onnxruntime's buffers and the arrays returned.
    per_sample = 2 * sum(sizes.values())
    if not max_bytes or per_sample <= max_bytes:
        if max_bytes and per_sample:
            step = max(1, min(step, max_bytes // per_sample))
        return [(slice(i, i + step), list(tensors)) for i in range(0, total, step)]
    groups: list[list[str]] = []
    used = max_bytes + 1
    for tensor in tensors:
        if used + 2 * sizes[tensor] > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(tensor)
        used += 2 * sizes[tensor]
    return [(slice(i, i + 1), g) for g in groups for i in range(total)]


def plan_groups(plan: Sequence[tuple[slice, list[str]]]) -> list[tuple[list[str], list[slice]]]:
    """Regroup a group-major pass plan as ``(tensors, [row slices])`` pairs."""
    out: list[tuple[list[str], list[slice]]] = []
    for rows, group in plan:
        if not out or out[-1][0] != group:
            out.append((group, []))
        out[-1][1].append(rows)
    return out



ImageSource = str | Path | Image.Image


def load_images(items: Sequence[ImageSource], spec: InputSpec, prep: Preprocessing
                ) -> tuple[list[NDArray[np.generic]], list[str], list[Image.Image],
                           list[Image.Image]]:
    """Rows of every item: (arrays, one source per row, model views, original pictures)."""
    arrays, pics, originals = [], [], []
    sources: list[str] = []
    for item in items:
        for source, array, pic in _load_item(item, spec, prep):
            arrays.append(array)
            sources.extend(row_sources(source, len(array)))
            pics.extend([pic[0]] if pic is not None else [])
            originals.extend([pic[1]] if pic is not None else [])
    return arrays, sources, pics, originals
