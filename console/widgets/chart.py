"""A titled column chart of one metric, downsampled to its width."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.charts import columns
from console.state import Series, fmt_num


class MetricChart(Static):
    DEFAULT_CSS = """
    MetricChart { height: 1fr; min-height: 3; padding: 0 1; }
    """

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.series: Series | None = None

    def show(self, title: str, series: Series | None) -> None:
        self.title, self.series = title, series
        self.refresh()

    def render(self) -> Text:
        width = max(10, self.size.width)
        height = max(1, self.size.height - 1)
        s = self.series
        if s is None or len(s) == 0:
            return Text.assemble((self.title, "bold"), ("  no data yet", "dim"))
        vals = s.downsample(width)
        head = Text.assemble((self.title, "bold"), f" {fmt_num(s.last)}",
                             (f"  min {fmt_num(min(s.values))} max {fmt_num(max(s.values))}", "dim"))
        head.truncate(width, overflow="ellipsis")
        body = "\n".join(columns(vals, width, height))
        return Text.assemble(head, "\n", (body, "cyan"))
