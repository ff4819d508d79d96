"""Memory: per GPU used/total with history and the planner's predicted peak; RAM without a GPU."""

from __future__ import annotations

from rich.text import Text

from console.charts import bar, finite, sparkline
from console.state import MonitorState
from console.widgets import TextPanel
from console.widgets.system import no_samples
from engine.units import human_bytes


class MemoryPanel(TextPanel):
    AUTO_HEIGHT = True
    DEFAULT_CSS = """
    MemoryPanel { width: 1fr; height: auto; min-height: 4; border: round $primary-darken-2; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "memory"
        self.state: MonitorState | None = None
        self.predicted: int | None = None

    def show(self, state: MonitorState, predicted: int | None) -> None:
        self.state, self.predicted = state, predicted
        self.changed()

    def text(self, width: int, height: int) -> Text:
        return memory_text(self.state, self.predicted, width)


def memory_text(st: MonitorState | None, predicted: int | None, width: int) -> Text:
    """The panel's text for a panel ``width`` cells wide (no Textual needed: tests and the fuzz bench call it)."""
    w = max(10, width - 2)
    predicted = predicted if finite(predicted) and predicted > 0 else None
    if st is None or st.system is None:
        return no_samples(st)
    out = Text()
    gpus = st.system.get("gpus") or []
    gauge = max(6, w - 34)
    for g in gpus:
        used, total = g.get("mem_used"), g.get("mem_total")
        frac = used / total if used is not None and total else None
        marker = predicted / total if predicted and total else None
        out.append(f"GPU{g.get('index', 0)} ", style="bold")
        out.append(bar(frac, gauge, marker), style="green" if (frac or 0) < 0.9 else "red")
        out.append(f" {human_bytes(used)}/{human_bytes(total)}\n")
        hist = st.gpu_mem.get(g.get("index", 0))
        if hist and total:
            out.append("     " + sparkline(list(hist), gauge, 0, total) + "\n", style="green")
    if not gpus:
        out.append("GPU  N/A (no GPU in this run)\n", style="dim")
    torch_mem = st.system.get("torch")
    if torch_mem:
        out.append(f"torch allocated {human_bytes(torch_mem.get('allocated'))}  reserved "
                   f"{human_bytes(torch_mem.get('reserved'))}  peak {human_bytes(torch_mem.get('peak'))}\n")
    if predicted:
        out.append(f"planner's predicted peak {human_bytes(predicted)}", style="yellow")
        out.append("  (│ on the gauge)\n" if gpus else "\n", style="dim")
    host, proc = st.system.get("host") or {}, st.system.get("process") or {}
    ram_used, ram_total = host.get("ram_used"), host.get("ram_total")
    frac = ram_used / ram_total if ram_used is not None and ram_total else None
    out.append("RAM  ", style="bold")
    out.append(bar(frac, gauge), style="blue")
    out.append(f" {human_bytes(ram_used)}/{human_bytes(ram_total)}\n")
    rss = (proc.get("rss") or 0) + (proc.get("rss_children") or 0)
    out.append(f"run's RSS {human_bytes(rss) if rss else 'N/A'}")
    return out
