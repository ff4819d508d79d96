"""The event log: checkpoints, OOM recoveries, warnings and errors, newest at the bottom."""

from __future__ import annotations

from rich.text import Text

from console.widgets import TextPanel

STYLE = {"error": "bold red", "warning": "yellow", "": ""}


class EventLog(TextPanel):
    DEFAULT_CSS = """
    EventLog { height: 6; border: round $primary-darken-2; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "events"
        self.lines: list[tuple[str, str, str]] = []
        self.tail_text: list[str] = []

    def show(self, lines, tail_text: list[str] | None = None) -> None:
        self.lines = lines
        self.tail_text = tail_text or []
        self.changed()

    def text(self, width: int, height: int) -> Text:
        return eventlog_text(self.lines, self.tail_text, width, height)


def eventlog_text(lines: list, tail_text: list[str], width: int, height: int) -> Text:
    """The log's text in ``width`` x ``height`` cells (no Textual needed)."""
    rows = max(1, height)
    width = max(10, width)
    out = Text()
    shown = lines[-(rows - len(tail_text)):] if rows > len(tail_text) else []
    for stamp, level, text in shown:
        out.append(f"{stamp} ", style="dim")
        out.append(text[: width - 9] + "\n", style=STYLE.get(level, ""))
    out.rstrip()
    for line in tail_text[-rows:]:
        out.append(line[:width] + "\n", style="red")
    if not shown and not tail_text:
        out.append("no events yet", style="dim")
    return out
