"""Shared parts of gradleak's self-contained HTML pages (the audit and federation reports):
one style sheet, the marker script headless checks read, formatting, data-URI images and an
atomic write. Nothing is loaded from elsewhere: a page is one file a person opens anywhere."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f5f7}.leaks{color:#a40e26;font-weight:600}.stopped{color:#1a7f37;font-weight:600}
.muted{color:#57606a;font-size:.9rem}img{image-rendering:pixelated;max-width:100%}
.defense{border:1px solid #d0d7de;border-radius:6px;padding:.4rem 1rem 1rem;margin:1rem 0}
pre{background:#f6f8fa;padding:.7rem;overflow-x:auto;font-size:.85rem}
.pics{display:flex;gap:1.5rem;flex-wrap:wrap;align-items:flex-start}
"""

# Marks the page once every image has loaded (headless checks read it from the DOM).
CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var all = Array.prototype.slice.call(document.images);
  var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.documentElement.setAttribute("data-images-loaded", ok.length + "/" + all.length);
});
</script>"""


def write_page(path: Path, title: str, body: list[str]) -> Path:
    """Write one self-contained page to ``path`` atomically (a reader never sees half a page)."""
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}{CHECK_SCRIPT}</body></html>"
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def gif_uri(data: bytes) -> str:
    return "data:image/gif;base64," + base64.b64encode(data).decode("ascii")


def png_uri(array) -> str:
    """A data URI of an (H, W, 3) uint8 array, or of PNG bytes."""
    if isinstance(array, bytes):
        data = array
    else:
        import imageio.v3 as iio

        data = iio.imwrite("<bytes>", array, extension=".png")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def is_number(value) -> bool:
    return isinstance(value, int | float) and value == value


def number(value, digits: int) -> str:
    if not is_number(value):
        return "-"
    return "inf" if value == float("inf") else f"{value:.{digits}f}"


def percent(value) -> str:
    return "-" if not is_number(value) else f"{100 * value:.0f} %"
