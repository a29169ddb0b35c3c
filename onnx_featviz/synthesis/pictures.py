"""Maximize and invert results as pictures under relative output paths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.io.outputs as outputs
from onnx_featviz.errors import InputError
from onnx_featviz.render import compose
from onnx_featviz.synthesis.run import F32, InvertResult, MaximizeResult


# -- pictures -------------------------------------------------------------------------------------
def render_maximized(result: MaximizeResult, *, tile: int | None = None,
                     columns: int | None = None) -> outputs.Rendered:
    """Draw a grid of the optimized images and one PNG per image.

    Args:
        result: from ``maximize``.
        tile: side of each grid tile in pixels (None: the image size, at least 96; images are
            scaled with nearest neighbour when enlarged and bicubic when reduced).
        columns: grid columns (None: about square).

    Returns:
        Pictures ``maximize_<tensor>.png`` (grid with channel captions) and
        ``<tensor>/<unit>.png`` per image; arrays ``images``, ``model_input``, ``units``,
        ``start``, ``final`` and ``history`` for ``.npz`` export.
    """
    stem = outputs.file_stem(result.tensor)
    names = _unit_names(result.units)
    singles = [_picture(img) for img in result.images]
    captions = [name.replace("_", " ").replace("channel", "ch") for name in names]
    grid = _grid([_fit_tile(p, tile) for p in singles], captions, columns)
    title = (f"{result.tensor}: {result.objective} objective, {result.recipe} recipe, "
             f"{len(result.history)} steps")
    side = compose.render_side_by_side([grid], [title])
    pictures = [outputs.Picture(f"maximize_{stem}.png", side)]
    pictures += [outputs.Picture(f"{stem}/{name}.png", pic) for name, pic in zip(names, singles,
                                                                             strict=True)]
    arrays: dict[str, NDArray[np.generic]] = {
        "images": result.images, "model_input": result.model_input,
        "units": np.asarray(result.units, np.int64), "start": result.start,
        "final": result.final, "history": result.history}
    return outputs.Rendered(tuple(pictures), arrays)


def render_inversions(results: Sequence[InvertResult], *, tile: int | None = None
                      ) -> outputs.Rendered:
    """Draw, per input, its original beside its reconstruction at each layer.

    Returns:
        ``invert.png`` (one row per input: original, then one tile per layer captioned with the
        correlation), ``<input>/invert_<tensor>.png`` per reconstruction, and arrays
        ``original`` plus ``<tensor>`` reconstructions, ``<tensor>_loss`` and
        ``<tensor>_correlation``.
    """
    if not results:
        raise InputError("no inversion results to draw; invert at least one layer")
    rows, pictures = [], []
    arrays: dict[str, NDArray[np.generic]] = {"original": results[0].originals}
    for index, folder in enumerate(outputs.input_folders(results[0].sources)):
        tiles = [_fit_tile(_picture(results[0].originals[index]), tile)]
        captions = ["original"]
        for res in results:
            pic = _picture(res.images[index])
            tiles.append(_fit_tile(pic, tile))
            captions.append(f"{res.tensor} r={res.correlation[index]:.2f}")
            stem = outputs.file_stem(res.tensor)
            pictures.append(outputs.Picture(f"{folder}/invert_{stem}.png", pic))
        rows.append(compose.render_side_by_side(tiles, captions))
    for res in results:
        key = outputs.file_stem(res.tensor)
        arrays.update({key: res.images, f"{key}_loss": res.loss,
                       f"{key}_correlation": res.correlation})
    return outputs.Rendered((outputs.Picture("invert.png", _stack(rows)), *pictures), arrays)


def _unit_names(units: Sequence[int]) -> list[str]:
    counts = {u: units.count(u) for u in units}
    seen: dict[int, int] = {}
    names = []
    for unit in units:
        base = "layer" if unit < 0 else f"channel_{unit}"
        seen[unit] = seen.get(unit, 0) + 1
        names.append(base if counts[unit] == 1 else f"{base}_{seen[unit] - 1}")
    return names


def _picture(image: F32) -> Image.Image:
    """(H, W, C) float in [0, 1] -> RGB (C = 3) or L (C = 1) image."""
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _fit_tile(image: Image.Image, tile: int | None) -> Image.Image:
    side = max(image.size)
    target = tile or max(side, 96)
    if target == side:
        return image
    size = (max(1, round(image.width * target / side)), max(1, round(image.height * target / side)))
    if target > side and target % side == 0:
        return image.resize(size, Image.Resampling.NEAREST)
    return image.resize(size, Image.Resampling.BICUBIC if target < side else
                        Image.Resampling.NEAREST)


def _grid(tiles: Sequence[Image.Image], captions: Sequence[str], columns: int | None
          ) -> Image.Image:
    side = max(1, int(np.ceil(np.sqrt(len(tiles)))))
    # about square, preferring a column count that leaves no empty cell (8 tiles: 4 x 2)
    cols = columns or min(range(side, side + 3), key=lambda c: (-len(tiles) % c, c))
    rows = [compose.render_side_by_side(list(tiles[i:i + cols]), list(captions[i:i + cols]))
            for i in range(0, len(tiles), cols)]
    return _stack(rows)


def _stack(rows: Sequence[Image.Image]) -> Image.Image:
    """Stack pictures top to bottom on white, left-aligned."""
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)),
                    (255, 255, 255))
    top = 0
    for row in rows:
        out.paste(row, (0, top))
        top += row.height
    return out

