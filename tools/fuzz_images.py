"""Fuzz cases for the image, array and labels loaders: seed files and their mutators.

Companion of ``tools/fuzz_cases.py`` (same ``Chooser`` convention; the calls each case feeds
are ``fuzz_cases.image_steps``). No torch here.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tools.fuzz_cases import INTERESTING, SAMPLES, Chooser, mutate_bytes, pick


# -- image seeds and cases ---------------------------------------------------------------------
def _pil_bytes(fmt: str, mode: str, size: tuple[int, int] = (12, 10), **options: Any) -> bytes:
    rng = np.random.default_rng(0)
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if bands == 1 else pixels,
                            "L" if bands == 1 else ("RGBA" if bands == 4 else "RGB"))
    if mode == "P":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@cache
def image_seeds() -> dict[str, bytes]:
    """Seed files by name (the suffix tells the loader): PNG samples, PIL-made files, arrays."""
    seeds = {f"sample{i}.png": p.read_bytes()
             for i, p in enumerate(sorted(SAMPLES.glob("*.png"))[:3])}
    seeds.update({
        "photo.jpg": _pil_bytes("JPEG", "RGB", quality=80),
        "progressive.jpg": _pil_bytes("JPEG", "RGB", progressive=True),
        "image.bmp": _pil_bytes("BMP", "RGB"),
        "image.gif": _pil_bytes("GIF", "P"),
        "rgba.png": _pil_bytes("PNG", "RGBA"),
        "image.tif": _pil_bytes("TIFF", "RGB"),
        "batch.npy": _npy_bytes(np.zeros((1, 1, 8, 8), np.float32)),
        "labels.txt": b"cat\ndog\nbird\n",
    })
    with contextlib.suppress(OSError, KeyError):
        seeds["image.webp"] = _pil_bytes("WEBP", "RGB")
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros((2, 1, 8, 8), np.float32))
    seeds["arrays.npz"] = buffer.getvalue()
    return seeds


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, *, depth: int = 8, color: int = 0) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (CRCs valid, data short)."""
    header = struct.pack(">IIBBBBB", width & 0xFFFFFFFF, height & 0xFFFFFFFF, depth, color,
                         0, 0, 0)
    body = zlib.compress(b"\0" * 4096, 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


def _png_chunk_mutation(data: bytes, choose: Chooser) -> bytes:
    """Mutate one chunk's payload of a PNG and fix its CRC, so the decoder reads it."""
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    if not chunks:
        return data
    index = choose(len(chunks))
    kind, payload = chunks[index]
    chunks[index] = (kind, mutate_bytes(payload, choose, steps=2))
    return data[:8] + b"".join(_chunk(k, p) for k, p in chunks)


def _header_dims(name: str, data: bytes, choose: Chooser) -> bytes:
    """Set the declared width/height fields of a GIF, BMP, JPEG or NPY header."""
    buf = bytearray(data)
    value = pick(choose, INTERESTING)
    if name.endswith(".gif") and len(buf) > 10:
        struct.pack_into("<HH", buf, 6, value & 0xFFFF, pick(choose, INTERESTING) & 0xFFFF)
    elif name.endswith(".bmp") and len(buf) > 26:
        struct.pack_into("<ii", buf, 18, _i32(value), _i32(pick(choose, INTERESTING)))
    elif name.endswith(".jpg"):
        at = max(buf.find(b"\xff\xc0"), buf.find(b"\xff\xc2"))
        if at >= 0:
            struct.pack_into(">HH", buf, at + 5, value & 0xFFFF,
                             pick(choose, INTERESTING) & 0xFFFF)
    elif name.endswith(".npy"):
        shape = pick(choose, ("(1000000000000,)", "(-1,)", "(0,)", "(1000000, 1000000)",
                              "(1, 1, 8, 8, 1)", "(4611686018427387904,)", "()"))
        descr = pick(choose, ("'<f4'", "'|O'", "'<U1000000'", "'V0'", "'<f16'", "'>i8'"))
        header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"
        header = header.ljust(118) + "\n"
        buf = bytearray(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
                        + data[128:])
    return bytes(buf)


def _i32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


def _special_image(folder: Path, name: str, choose: Chooser) -> Path:
    path = folder / name
    action = choose(5)
    if action == 0:
        os.mkfifo(path)
    elif action == 1:
        os.symlink("/dev/zero", path)
    elif action == 2:
        os.symlink(path, path)
    elif action == 3:
        path.mkdir()
    else:
        path.write_bytes(b"")
    return path


IMAGE_KINDS = ("bytes", "chunks", "header", "bomb", "special")


def write_image_case(folder: Path, choose: Chooser,
                     kinds: Sequence[str] = IMAGE_KINDS) -> tuple[Path, str]:
    """Write one mutated image, array or labels file into ``folder``; return (path, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = image_seeds()
    kind = pick(choose, kinds)
    name = pick(choose, sorted(seeds))
    data = seeds[name]
    if kind == "special":
        return _special_image(folder, name, choose), f"special:{name}"
    if kind == "bomb":
        name = "bomb.png"
        width, height = pick(choose, ((80000, 1), (1, 80000), (60000, 60000), (2**31 - 1, 1),
                                      (0, 0), (9000, 9000), (20000, 20000), (2**32 - 1, 2)))
        data = png_bomb(width, height, depth=pick(choose, (1, 8, 16)),
                        color=pick(choose, (0, 2, 3, 4, 6)))
    elif kind == "chunks" and name.endswith(".png"):
        data = _png_chunk_mutation(data, choose)
    elif kind == "header":
        data = _header_dims(name, data, choose)
    else:
        data = mutate_bytes(data, choose)
    path = folder / name
    path.write_bytes(data)
    return path, f"{kind}:{name}"
