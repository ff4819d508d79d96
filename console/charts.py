"""Text charts: sparklines and multi-row column charts made of block characters."""

from __future__ import annotations

BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int, lo: float | None = None, hi: float | None = None) -> str:
    """One line of block characters, the last ``width`` values (scaled to lo..hi)."""
    vals = values[-width:] if width > 0 else []
    if not vals:
        return ""
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    span = (hi - lo) or 1.0
    return "".join(BLOCKS[1 + min(7, max(0, int((v - lo) / span * 7.999)))] for v in vals)


def columns(values: list[float], width: int, height: int) -> list[str]:
    """``height`` lines, top first, of a column chart of ``values`` (already at most ``width``)."""
    vals = values[-width:]
    if not vals or height <= 0:
        return [" " * width for _ in range(max(0, height))]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    levels = [1 + int((v - lo) / span * (height * 8 - 1)) for v in vals]  # eighths of a row, >= 1
    rows = []
    for r in range(height - 1, -1, -1):
        line = []
        for lev in levels:
            fill = lev - r * 8
            line.append("█" if fill >= 8 else BLOCKS[fill] if fill > 0 else " ")
        rows.append("".join(line).ljust(width))
    return rows


def bar(fraction: float | None, width: int, marker: float | None = None) -> str:
    """A horizontal gauge; ``marker`` (a fraction) draws a │ where a prediction lies."""
    if width <= 0:
        return ""
    cells = ["░"] * width
    if fraction is not None:
        filled = int(round(max(0.0, min(1.0, fraction)) * width))
        for i in range(filled):
            cells[i] = "█"
    if marker is not None and 0 <= marker <= 1:
        cells[min(width - 1, int(marker * width))] = "│"
    return "".join(cells)
