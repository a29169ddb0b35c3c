"""Pictures a run made and where they go: relative paths under one output folder, written
atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

import onnx_featviz.io.files as fileio
from onnx_featviz.errors import InputError


# -- pictures for the command line ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Picture:
    """A rendered image and the relative file name it should be saved under."""

    name: str
    image: Image.Image
    source: str | None = None
    """The tensor, node or layer name the picture shows (None: not one name)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """Pictures plus the raw arrays behind them (for ``.npz`` export) and their layouts.

    ``layouts`` maps an array key to its layout (``NCHW``, ``NHWC``, ``NTC``; absent or None
    when unknown); the arrays are kept exactly as computed.
    """

    pictures: tuple[Picture, ...]
    arrays: Mapping[str, NDArray[np.generic]]
    layouts: Mapping[str, str | None] = field(default_factory=dict)


def input_folders(sources: Sequence[str]) -> list[str]:
    """Return one distinct, file-system safe folder name per input."""
    names: list[str] = []
    for source in sources:
        stem = file_stem(Path(source.split(":")[0]).stem + (
            "_" + source.rsplit(":", 1)[1] if ":" in source else ""))
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}_{n}"
        names.append(name)
    return names


#: Longest file stem written: TFLite names run to hundreds of characters and file systems
#: allow 255 bytes per name (a suffix, ``_before_after`` and a picture prefix must still fit).
MAX_STEM = 96
_HASH_CHARS = 10


def file_stem(name: str) -> str:
    """Return a file-system safe stem for any tensor or node name.

    Characters other than letters, digits, ``-``, ``_`` and ``.`` become ``_``; a stem longer
    than ``MAX_STEM`` keeps its start and ends with ``_`` and a short hash of the full name, so
    that long names sharing a prefix still get distinct files.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_"
                   for c in name).strip("._")
    if len(safe) > MAX_STEM:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:_HASH_CHARS]
        safe = f"{safe[:MAX_STEM - _HASH_CHARS - 1]}_{digest}"
    return safe or "tensor"


def manifest(rendered: Rendered, written: Sequence[Path]) -> dict[str, Any]:
    """Return the JSON manifest entries of a run: which name each file shows, array layouts.

    Args:
        rendered: what the run drew.
        written: ``save_pictures``' return value for it (pictures first, in order).

    Returns:
        ``{"files": [{"name", "file"}...], "arrays": {key: {"layout"}}}``; ``name`` is the
        tensor, node or layer a picture shows (None when it shows no single one).
    """
    files = [{"name": pic.source, "file": str(path)}
             for pic, path in zip(rendered.pictures, written, strict=False)]
    arrays = {key: {"layout": rendered.layouts.get(key),
                    "shape": list(np.shape(value))}
              for key, value in rendered.arrays.items()}
    return {"files": files, "arrays": arrays}


def save_pictures(pictures: Sequence[Picture], out: Path, *,
                  arrays: Mapping[str, NDArray[np.generic]] | None = None,
                  npz: Path | None = None) -> list[Path]:
    """Save pictures under ``out`` (a folder, or a ``.png`` file for a single picture).

    Returns:
        The paths written, pictures first, then the ``.npz`` file.
    """
    if out.suffix.lower() == ".png" and len(pictures) == 1:
        targets = {out: pictures[0].image}
    elif out.suffix.lower() == ".png":
        raise InputError(f"{out} names one file but there are {len(pictures)} pictures; "
                         "give a folder instead")
    else:
        targets = {out / p.name: p.image for p in pictures}
    fileio.check_writable([*targets, *([npz] if npz is not None else [])])
    fileio.save_images(targets)
    written = list(targets)
    if npz is not None:
        fileio.save_npz({k: np.asarray(v) for k, v in (arrays or {}).items()}, npz)
        written.append(npz)
    return written

