"""Pictures a run made and where they go: relative paths under one output folder, written
atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    """A rendered image, the relative file name it is saved under, and what it shows.

    ``title`` is the text drawn on the picture (empty when it has none); ``shows`` says in
    words what the picture is (``manifest.json`` records both).
    """

    name: str
    image: Image.Image
    title: str = ""
    shows: str = ""

    def __repr__(self) -> str:
        return (f"Picture({self.name!r}, {self.image.width}x{self.image.height} "
                f"{self.image.mode}, title={self.title!r})")

    def _repr_png_(self) -> bytes:
        return png_bytes(self.image)


@dataclass(frozen=True, slots=True)
class Rendered:
    """Pictures plus the raw arrays behind them (for ``.npz`` export)."""

    pictures: tuple[Picture, ...]
    arrays: Mapping[str, NDArray[np.generic]]

    def __repr__(self) -> str:
        arrays = ", ".join(f"{k}: {tuple(np.shape(v))}" for k, v in self.arrays.items())
        return f"Rendered({len(self.pictures)} pictures, arrays {{{arrays}}})"

    def _repr_html_(self) -> str:
        return pictures_html(self.pictures)


def png_bytes(image: Image.Image) -> bytes:
    """Return ``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image: Image.Image) -> str:
    """Return ``image`` as an inline ``data:image/png;base64,...`` URI (for notebooks, HTML)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def pictures_html(pictures: Sequence[Picture]) -> str:
    """Return an HTML block showing every picture inline (PNG data URIs) under its file name."""
    figures = "".join(
        f'<figure style="display:inline-block;margin:4px;vertical-align:top">'
        f'<img src="{data_uri(p.image)}" alt="{html.escape(p.title or p.name)}"/>'
        f'<figcaption style="font:11px monospace">{html.escape(p.name)}</figcaption></figure>'
        for p in pictures)
    return f"<div>{figures}</div>"


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

    A folder also gets ``manifest.json``: one entry per file (``file`` relative to the folder,
    ``title``, ``shows``, ``width``, ``height``), merged with the entries of earlier runs into
    the same folder so that it lists every picture there.

    Returns:
        The paths written, pictures first, then the ``.npz`` file, then ``manifest.json``.
    """
    if out.suffix.lower() == ".png" and len(pictures) == 1:
        targets = {out: pictures[0].image}
    elif out.suffix.lower() == ".png":
        raise InputError(f"{out} names one file but there are {len(pictures)} pictures; "
                         "give a folder instead")
    else:
        targets = {out / p.name: p.image for p in pictures}
    manifest = [out / MANIFEST] if out.suffix.lower() != ".png" else []
    fileio.check_writable([*targets, *([npz] if npz is not None else []), *manifest])
    fileio.save_images(targets)
    written = list(targets)
    if npz is not None:
        fileio.save_npz({k: np.asarray(v) for k, v in (arrays or {}).items()}, npz)
        written.append(npz)
    if out.suffix.lower() != ".png":
        written.append(_save_manifest(pictures, out))
    return written


MANIFEST = "manifest.json"


def _save_manifest(pictures: Sequence[Picture], out: Path) -> Path:
    """Write ``out/manifest.json`` listing ``pictures``, keeping other runs' entries."""
    path = out / MANIFEST
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            old = json.loads(fileio.read_text(path))
            entries = {e["file"]: e for e in old.get("files", []) if isinstance(e, dict)
                       and isinstance(e.get("file"), str) and (out / e["file"]).is_file()}
        except (ValueError, AttributeError, InputError):
            entries = {}  # a manifest we cannot read is rewritten from this run
    for picture in pictures:
        entries[picture.name] = {"file": picture.name, "title": picture.title,
                                 "shows": picture.shows, "width": picture.image.width,
                                 "height": picture.image.height}
    fileio.save_json({"files": [entries[k] for k in sorted(entries)]}, path)
    return path

