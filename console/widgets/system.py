"""GPU utilisation, temperature and power as history (N/A without a GPU); CPU % and RAM."""

from __future__ import annotations

from rich.text import Text

from console.charts import sparkline
from console.state import MonitorState
from console.widgets import TextPanel
from engine.units import human_bytes


class SystemPanel(TextPanel):
    AUTO_HEIGHT = True
    DEFAULT_CSS = """
    SystemPanel { width: 1fr; height: auto; min-height: 4; border: round $primary-darken-2; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "system"
        self.state: MonitorState | None = None

    def show(self, state: MonitorState) -> None:
        self.state = state
        self.changed()

    def text(self, width: int, height: int) -> Text:
        return system_text(self.state, width)


def no_samples(st: MonitorState | None) -> Text:
    """What the memory and system panels say before (or without) any system record."""
    meta = st.meta if st is not None else {}
    if meta.get("imported_from"):
        return Text("no system records: this run was imported from its trainer_state.json", style="dim")
    if meta.get("status") in ("finished", "stopped", "failed"):
        return Text("no system records in this session", style="dim")
    return Text("waiting for the first system sample…", style="dim")


def system_text(st: MonitorState | None, width: int) -> Text:
    """The panel's text for a panel ``width`` cells wide (no Textual needed)."""
    if st is None or st.system is None:
        return no_samples(st)
    w = max(8, width - 24)
    out = Text()
    gpus = st.system.get("gpus") or []
    for g in gpus:
        i = g.get("index", 0)
        out.append(f"GPU{i} util ", style="bold")
        out.append(sparkline(list(st.gpu_util.get(i, [])), w, 0, 100), style="magenta")
        out.append(f" {g.get('util', 'N/A')}%\n")
        out.append(f"     temp {g.get('temp_c', 'N/A')}°C  power {g.get('power_w', 'N/A')}"
                   f"/{g.get('power_limit_w', 'N/A')} W\n")
    if not gpus:
        out.append("GPU util/temp/power  N/A\n", style="dim")
    host = st.system.get("host") or {}
    out.append("CPU ", style="bold")
    out.append(sparkline(list(st.cpu), w, 0, 100), style="yellow")
    out.append(f" {host.get('cpu_percent', 'N/A')}% of {host.get('cpus', '?')}\n")
    proc = st.system.get("process") or {}
    out.append(f"run's CPU {proc.get('cpu_percent', 'N/A')}%  threads {proc.get('threads', 'N/A')}  "
               f"RAM {human_bytes(host.get('ram_used'))}")
    if len(st.ranks) > 1:
        for r, rec in sorted(st.ranks.items()):
            p = rec.get("process") or {}
            t = rec.get("torch") or {}
            out.append(f"\nrank {r}", style="bold")
            out.append(f"  pid {p.get('pid', '?')}  CPU {p.get('cpu_percent', 'N/A')}%  "
                       f"RSS {human_bytes(p.get('rss'))}"
                       + (f"  GPU{t.get('device', '?')} allocated {human_bytes(t.get('allocated'))}" if t else ""))
    return out
