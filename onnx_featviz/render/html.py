"""The HTML report: sections as data in, one self-contained HTML page out. Pure.

Every picture is an inline data URI (WebP or PNG), CSS and JavaScript are inline, and a
Content-Security-Policy forbids any fetch, so the page opens from disk with no network. The
layer table has a text filter; a picker shows one panel (e.g. one layer's feature maps) at a
time, so hidden panels' pictures are not decoded until picked; the drift strip draws one cell
per compared layer coloured by SNR, with the first divergent layer marked.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from onnx_featviz.errors import InputError
from onnx_featviz.render.pictures import colormap_lut

#: Picture encodings a report can use (``image_data_uri``).
IMAGE_FORMATS = ("webp", "png")
#: Pictures whose longer side is under this many pixels are shown enlarged by a whole factor.
SMALL_SIDE = 112


@dataclass(frozen=True, slots=True)
class Figure:
    """One picture with a caption; ``max_side`` bounds its longer side in pixels (thumbnail)."""

    image: Image.Image
    caption: str
    max_side: int = 720


@dataclass(frozen=True, slots=True)
class Gallery:
    """Figures side by side (wrapping), under an optional heading."""

    figures: tuple[Figure, ...]
    heading: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """Key-value pairs shown as a definition list."""

    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Text:
    """A paragraph; ``kind`` is ``"p"``, ``"note"`` or ``"warn"`` (a highlighted box)."""

    text: str
    kind: str = "p"


@dataclass(frozen=True, slots=True)
class Table:
    """A table; ``key`` is its element id, ``filter`` adds a text box that hides rows not
    containing the typed text, ``highlight`` marks rows by index (e.g. the first divergent)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    key: str
    filter: bool = False
    highlight: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Card:
    """Blocks stacked in a box under a heading (e.g. one input's picture and its top classes)."""

    heading: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class Row:
    """Cards or other blocks side by side, wrapping on narrow screens."""

    blocks: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class Panel:
    """One choice of a ``Picker``: its label and what it shows."""

    label: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class Picker:
    """A drop-down showing one of ``panels`` at a time; ``key`` is the ``<select>`` id."""

    key: str
    label: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True, slots=True)
class StripCell:
    """One layer of the drift strip: its name, SNR in dB (inf: identical), over threshold."""

    layer: str
    snr_db: float
    broken: bool


@dataclass(frozen=True, slots=True)
class DriftStrip:
    """Layers in graph order coloured by SNR from ``low`` (red) to ``high`` dB (green)."""

    cells: tuple[StripCell, ...]
    first_divergent: str | None
    low: float = 0.0
    high: float = 60.0


Block = Figure | Gallery | Facts | Text | Table | Card | Row | Picker | DriftStrip


@dataclass(frozen=True, slots=True)
class Section:
    """A titled part of the report; ``key`` is its anchor id."""

    key: str
    title: str
    blocks: tuple[Block, ...]


def image_data_uri(image: Image.Image, image_format: str = "webp", *, quality: int = 82,
                   max_side: int | None = None) -> str:
    """Encode a picture as a ``data:`` URI, shrunk so its longer side is at most ``max_side``.

    Raises:
        InputError: an unknown ``image_format`` (choose from ``IMAGE_FORMATS``).
    """
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"unknown report image format {image_format!r}; choose from "
                         f"{', '.join(IMAGE_FORMATS)}")
    picture = image if image.mode in ("RGB", "L") else image.convert("RGB")
    if max_side is not None and max(picture.size) > max_side:
        picture = picture.copy()
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format == "webp":
        picture.save(buffer, "WEBP", quality=quality, method=4)
    else:
        picture.save(buffer, "PNG", optimize=True)
    return f"data:image/{image_format};base64," + base64.b64encode(buffer.getvalue()).decode()


def render_report(title: str, sections: Sequence[Section], *, subtitle: str = "",
                  image_format: str = "webp") -> str:
    """Return one self-contained HTML page: a table of contents, then every section.

    Args:
        title: the page title and heading.
        sections: the parts of the report, in order.
        subtitle: a line under the heading (e.g. the command or the inputs).
        image_format: ``"webp"`` (small) or ``"png"`` (lossless) for every picture.

    Returns:
        The HTML document as a string (UTF-8 when encoded); it references no external URL.
    """
    toc = "".join(f'<li><a href="#{_id(s.key)}">{_e(s.title)}</a></li>' for s in sections)
    body = "".join(_section(s, image_format) for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1><p class=\"sub\">{_e(subtitle)}</p>"
        f"<nav><ul>{toc}</ul></nav></header>\n<main>{body}</main>\n"
        f"<script>{_JS}</script>\n</body>\n</html>\n")


def _section(section: Section, fmt: str) -> str:
    inner = "".join(_block(b, fmt) for b in section.blocks)
    return (f'<section id="{_id(section.key)}"><h2>{_e(section.title)}</h2>{inner}'
            "</section>\n")


def _block(block: Block, fmt: str) -> str:
    if isinstance(block, Figure):
        return _figure(block, fmt)
    if isinstance(block, Gallery):
        head = f"<h3>{_e(block.heading)}</h3>" if block.heading else ""
        figures = "".join(_figure(f, fmt) for f in block.figures)
        return f'{head}<div class="gallery">{figures}</div>'
    if isinstance(block, Facts):
        rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in block.items)
        return f'<dl class="facts">{rows}</dl>'
    if isinstance(block, Text):
        css = "" if block.kind == "p" else f' class="{_id(block.kind)}"'
        return f"<p{css}>{_e(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Card):
        inner = "".join(_block(b, fmt) for b in block.blocks)
        return f'<div class="card"><h3>{_e(block.heading)}</h3>{inner}</div>'
    if isinstance(block, Row):
        return '<div class="row">' + "".join(_block(b, fmt) for b in block.blocks) + "</div>"
    if isinstance(block, Picker):
        return _picker(block, fmt)
    return _strip(block)


def _figure(figure: Figure, fmt: str) -> str:
    uri = image_data_uri(figure.image, fmt, max_side=figure.max_side)
    width, height = figure.image.size
    shrink = min(1.0, figure.max_side / max(width, height))
    # tiny inputs (MNIST's 28 px) are shown enlarged with square pixels, not re-encoded larger
    grow = max(1, -(-SMALL_SIDE // max(width, height)))
    size = f'width="{round(width * shrink) * grow}" height="{round(height * shrink) * grow}"'
    css = ' class="pixelated"' if grow > 1 else ""
    return (f'<figure><img src="{uri}" alt="{_e(figure.caption)}" {size}{css} loading="lazy" '
            f'decoding="async"><figcaption>{_e(figure.caption)}</figcaption></figure>')


def _table(table: Table) -> str:
    key = _id(table.key)
    box = (f'<p class="filter"><input type="search" class="table-filter" id="{key}-filter" '
           f'data-table="{key}" placeholder="filter rows (name, op, shape...)" '
           f'aria-label="filter {key}"> <span id="{key}-count">{len(table.rows)} of '
           f"{len(table.rows)} rows</span></p>" if table.filter else "")
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    rows = "".join(
        ('<tr class="hl">' if i in table.highlight else "<tr>")
        + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
        for i, row in enumerate(table.rows))
    return (f'{box}<div class="scroll"><table id="{key}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _picker(picker: Picker, fmt: str) -> str:
    key = _id(picker.key)
    options = "".join(f'<option value="{i}">{_e(p.label)}</option>'
                      for i, p in enumerate(picker.panels))
    panels = "".join(
        f'<div class="panel" data-picker="{key}" data-value="{i}" data-label="{_e(p.label)}"'
        f'{"" if i == 0 else " hidden"}>' + "".join(_block(b, fmt) for b in p.blocks) + "</div>"
        for i, p in enumerate(picker.panels))
    return (f'<p class="pick"><label for="{key}">{_e(picker.label)}</label> '
            f'<select class="picker" id="{key}">{options}</select></p>{panels}')


def strip_color(snr_db: float, low: float, high: float) -> str:
    """Return the ``#rrggbb`` colour of an SNR on the red-yellow-green scale (grey for NaN)."""
    if math.isnan(snr_db):
        return "#999999"
    share = 1.0 if math.isinf(snr_db) and snr_db > 0 else (snr_db - low) / (high - low)
    lut = colormap_lut("RdYlGn")
    index = int(round(min(max(share, 0.0), 1.0) * (len(lut) - 1)))
    red, green, blue = (int(v) for v in lut[index])
    return f"#{red:02x}{green:02x}{blue:02x}"


def _strip(strip: DriftStrip) -> str:
    cells = []
    for cell in strip.cells:
        first = cell.layer == strip.first_divergent
        css = "cell" + (" broken" if cell.broken else "") + (" first" if first else "")
        snr = "identical" if math.isinf(cell.snr_db) else f"{cell.snr_db:.1f} dB"
        label = f"{cell.layer}: SNR {snr}" + (" (first divergent)" if first else "")
        cells.append(f'<span class="{css}" style="background:'
                     f'{strip_color(cell.snr_db, strip.low, strip.high)}" title="{_e(label)}" '
                     f'data-layer="{_e(cell.layer)}" data-snr="{_e(snr)}"></span>')
    stops = ", ".join(strip_color(strip.low + (strip.high - strip.low) * k / 4, strip.low,
                                  strip.high) for k in range(5))
    verdict = (f'first divergent layer: <b id="first-divergent">{_e(strip.first_divergent)}</b>'
               if strip.first_divergent else "no layer breaks the thresholds")
    return (f'<div class="strip" id="drift-strip">{"".join(cells)}</div>'
            f'<p class="legend"><span class="ramp" style="background:linear-gradient(to right, '
            f'{stops})"></span> SNR {strip.low:g} dB to {strip.high:g} dB or more, input side '
            f"left; {verdict}</p>")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _id(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#eee;padding:12px 24px}
header h1{margin:0;font-size:22px}.sub{margin:4px 0;color:#b0bec5}
nav ul{list-style:none;padding:0;margin:6px 0 0;display:flex;flex-wrap:wrap;gap:14px}
nav a{color:#80cbc4}main{padding:8px 24px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:14px 0;padding:8px 16px}
h2{font-size:18px;margin:6px 0 10px}h3{font-size:15px;margin:10px 0 4px}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card{border:1px solid #e0e0e0;border-radius:4px;padding:4px 10px}
.card .scroll{max-height:none;border:0}
.gallery{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;max-width:100%;display:table}figure img{max-width:100%;height:auto;display:block}
img.pixelated{image-rendering:pixelated}
figcaption{font-size:12px;color:#444;display:table-caption;caption-side:bottom}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:4px 0}
dt{font-weight:600}dd{margin:0}
.scroll{max-height:420px;overflow:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:12px}th,td{padding:2px 8px;text-align:left}
th{position:sticky;top:0;background:#eceff1}tr:nth-child(even){background:#f7f7f7}
tr.hl,tr.hl:nth-child(even){background:#ffcdd2;font-weight:600}
.note{background:#e3f2fd;padding:6px 10px}.warn{background:#fff3e0;padding:6px 10px}
[hidden]{display:none !important}input.table-filter{width:300px}
.strip{display:flex;height:34px;border:1px solid #999;margin:8px 0 2px}
.strip .cell{flex:1;min-width:3px}
.strip .cell.broken{box-shadow:inset 0 -6px 0 #000}
.strip .cell.first{outline:3px solid #000;outline-offset:-3px;flex:2}
.legend .ramp{display:inline-block;width:120px;height:10px;border:1px solid #999}
"""

_JS = """
(function(){
document.querySelectorAll('input.table-filter').forEach(function(box){
  var table=document.getElementById(box.dataset.table);
  var rows=table.querySelectorAll('tbody tr');
  var count=document.getElementById(box.dataset.table+'-count');
  box.addEventListener('input',function(){
    var q=box.value.trim().toLowerCase(),shown=0;
    rows.forEach(function(tr){
      var hit=tr.textContent.toLowerCase().indexOf(q)>=0;tr.hidden=!hit;if(hit){shown++;}});
    if(count){count.textContent=shown+' of '+rows.length+' rows';}
  });
});
document.querySelectorAll('select.picker').forEach(function(sel){
  function show(){
    document.querySelectorAll('div.panel[data-picker="'+sel.id+'"]').forEach(function(p){
      p.hidden=p.dataset.value!==sel.value;});
  }
  sel.addEventListener('change',show);show();
});
})();
"""
