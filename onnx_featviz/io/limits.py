"""Resource limits checked before work starts: pixels, image counts, planned allocations.

Each limit has a default and an environment variable that raises (or lowers) it:

- ``FEATVIZ_MAX_PIXELS`` (default 89,478,485, Pillow's ``Image.MAX_IMAGE_PIXELS``): pixels of
  one picture after the preprocessing resize, of ``--size``, of a tile grid;
- ``FEATVIZ_MAX_IMAGES`` (default 4096): images made in one run (``maximize``);
- ``FEATVIZ_MAX_WINDOWS`` (default 1,000,000): occlusion windows per image;
- ``FEATVIZ_MAX_BYTES`` (default: the memory available now, ``MemAvailable``): one array
  planned from model dims.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from onnx_featviz.errors import InputError

_DEFAULT_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS, without importing Pillow here
_DEFAULT_IMAGES = 4096
_DEFAULT_WINDOWS = 1_000_000


def _env_limit(name: str, default: int) -> int:
    """Return the positive integer in environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        raise InputError(f"environment variable {name}={raw!r} is not a number; set it to a "
                         f"positive integer (default {default}) or unset it") from None
    if value < 1:
        raise InputError(f"environment variable {name}={raw!r} must be at least 1; unset it "
                         f"for the default {default}")
    return value


def max_pixels() -> int:
    """Return the most pixels one picture may have (``FEATVIZ_MAX_PIXELS``)."""
    return _env_limit("FEATVIZ_MAX_PIXELS", _DEFAULT_PIXELS)


def check_pixels(width: float, height: float, what: str) -> None:
    """Refuse a ``width`` x ``height`` picture above ``FEATVIZ_MAX_PIXELS``.

    Raises:
        InputError: the picture holds more pixels than the limit (or a side is not finite).
    """
    limit = max_pixels()
    pixels = float(width) * float(height)
    if not pixels <= limit:
        raise InputError(f"{what} would be {width:.0f}x{height:.0f} = {pixels:.3g} pixels, over "
                         f"the limit of {limit}; use a smaller size, or raise the limit with "
                         "FEATVIZ_MAX_PIXELS")


def check_count(count: int, what: str, variable: str, default: int) -> None:
    """Refuse ``count`` items above the limit in environment variable ``variable``.

    Raises:
        InputError: ``count`` is over the limit.
    """
    limit = _env_limit(variable, default)
    if count > limit:
        raise InputError(f"{what}: {count} is over the limit of {limit}; use fewer, or raise "
                         f"the limit with {variable}")


def check_images(count: int, what: str) -> None:
    """Refuse more than ``FEATVIZ_MAX_IMAGES`` images in one run."""
    check_count(count, what, "FEATVIZ_MAX_IMAGES", _DEFAULT_IMAGES)


def check_windows(count: int, what: str) -> None:
    """Refuse more than ``FEATVIZ_MAX_WINDOWS`` occlusion windows per image."""
    check_count(count, what, "FEATVIZ_MAX_WINDOWS", _DEFAULT_WINDOWS)


def available_bytes() -> int:
    """Return the memory available now: ``MemAvailable`` from /proc/meminfo, else free pages
    times the page size (``os.sysconf``), else 1 TiB when neither can be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 1 << 40


def check_allocation(shape: Sequence[int], itemsize: int, what: str) -> None:
    """Refuse an array of ``shape`` planned from model dims that would not fit in memory.

    The bound is ``FEATVIZ_MAX_BYTES`` when set, else the memory available now.

    Raises:
        InputError: the array needs more bytes than the bound.
    """
    needed = math.prod(int(d) for d in shape) * itemsize
    limit = _env_limit("FEATVIZ_MAX_BYTES", 0) or available_bytes()
    if needed > limit:
        raise InputError(f"{what} of shape {tuple(shape)} needs {needed / 2**30:.3g} GiB, more "
                         f"than the {limit / 2**30:.3g} GiB available; use a smaller input size, "
                         "or set FEATVIZ_MAX_BYTES to allow more")
