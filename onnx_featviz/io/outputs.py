"""Pictures a run made and where they go: relative paths under one output folder, written
atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True, slots=True)
class Rendered:
    """Pictures plus the raw arrays behind them (for ``.npz`` export)."""

    pictures: tuple[Picture, ...]
    arrays: Mapping[str, NDArray[np.generic]]


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


def file_stem(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return safe or "tensor"


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

