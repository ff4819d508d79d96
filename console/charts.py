"""Text charts: sparklines and multi-row column charts made of block characters."""

from __future__ import annotations

from engine.units import finite

BLOCKS = " ▁▂▃▄▅▆▇█"


def _scaled(v: float, lo: float, span: float, top: float) -> int:
    """Where ``v`` lies in [lo, lo + span] on 0..top (0 when the arithmetic leaves the real numbers)."""
    x = (float(v) - lo) / span * top
    return max(0, int(x)) if finite(x) else 0


def sparkline(values: list[float], width: int, lo: float | None = None, hi: float | None = None) -> str:
    """One line of block characters, the last ``width`` values (scaled to lo..hi)."""
    vals = values[-width:] if width > 0 else []
    real = [float(v) for v in vals if finite(v)]
    if not real:
        return " " * len(vals)
    lo = min(real) if not finite(lo) else lo
    hi = max(real) if not finite(hi) else hi
    span = (hi - lo) or 1.0
    return "".join(BLOCKS[1 + min(7, _scaled(v, lo, span, 7.999))] if finite(v) else " "
                   for v in vals)  # NaN (a diverged loss) and infinities: a gap


def columns(values: list[float], width: int, height: int) -> list[str]:
    """``height`` lines, top first, of a column chart of ``values`` (already at most ``width``)."""
    vals = values[-width:]
    real = [float(v) for v in vals if finite(v)]
    if not real or height <= 0:
        return [" " * width for _ in range(max(0, height))]
    lo, hi = min(real), max(real)
    span = (hi - lo) or 1.0
    levels = [1 + _scaled(v, lo, span, height * 8 - 1) if finite(v) else 0
              for v in vals]  # eighths of a row, >= 1; NaN and infinities: an empty column
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
    if finite(fraction):
        filled = int(round(max(0.0, min(1.0, fraction)) * width))
        for i in range(filled):
            cells[i] = "█"
    if finite(marker) and 0 <= marker <= 1:
        cells[min(width - 1, int(marker * width))] = "│"
    return "".join(cells)
