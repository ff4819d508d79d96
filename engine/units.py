"""How numbers are shown to people: sizes in binary units, durations, ISO timestamps."""

from __future__ import annotations

import datetime as _dt
import math


def finite(x) -> bool:
    """A real number that can be shown (not None, text, a boolean, NaN, an infinity or too big for a float)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def human_bytes(n: float | None) -> str:
    """Binary units, as GPU memory is sold and shown: 12.0 GiB, 206 MiB; N/A for None."""
    if not finite(n):
        return "N/A"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float | None) -> str:
    """'4m05s', '2h13m', '3d04h'; '--' when unknown."""
    if not finite(seconds):
        return "--"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h >= 24:
        return f"{h // 24}d{h % 24:02d}h"
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_seconds(seconds: float | None) -> str:
    """'1.6 s', '12 min', '3.5 h', '57 days' (plan tables); '-' when unknown."""
    if not finite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    if minutes < 72 * 60:
        return f"{minutes / 60:.1f} h"
    days = minutes / 1440
    return f"{days:.0f} days" if days < 1000 else f"{days / 365.25:,.1f} years"


def parse_time(text: str | None) -> float | None:
    """An ISO timestamp from session.json as epoch seconds, or None."""
    if not text or not isinstance(text, str):
        return None
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
