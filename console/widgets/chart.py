"""A titled column chart of one metric, downsampled to its width."""

from __future__ import annotations

from rich.text import Text

from console.charts import columns
from console.state import Series, fmt_num
from console.widgets import TextPanel


class MetricChart(TextPanel):
    DEFAULT_CSS = """
    MetricChart { height: 1fr; min-height: 3; padding: 0 1; }
    """

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.series: Series | None = None

    def show(self, title: str, series: Series | None) -> None:
        self.title, self.series = title, series
        self.changed()

    def text(self, width: int, height: int) -> Text:
        return chart_text(self.title, self.series, width, height)


def chart_text(title: str, s: Series | None, width: int, height: int) -> Text:
    """The chart's text in ``width`` x ``height`` cells (no Textual needed)."""
    width = max(10, width)
    height = max(1, height - 1)
    if s is None or len(s) == 0:
        return Text.assemble((title, "bold"), ("  no data yet", "dim"))
    vals = s.downsample(width)
    head = Text.assemble((title, "bold"), f" {fmt_num(s.last)}",
                         (f"  min {fmt_num(s.lo)} max {fmt_num(s.hi)}", "dim"))
    head.truncate(width, overflow="ellipsis")
    body = "\n".join(columns(vals, width, height))
    return Text.assemble(head, "\n", (body, "cyan"))
