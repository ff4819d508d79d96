"""Monitor: one run (or evaluation), live or finished, read from its session folder."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static

from console.charts import bar
from console.screens.dialogs import Confirm, KeyHelp
from console.state import MonitorState, chart_sets, series_label, stage_info
from console.widgets.chart import MetricChart
from console.widgets.eventlog import EventLog
from console.widgets.memory import MemoryPanel
from console.widgets.system import SystemPanel
from engine.session import EVENTS, SESSION_JSON, EventTail, liveness, read_session_json
from engine.session.layout import RUN_LOG, from_own_script
from engine.session.requests import request_checkpoint, request_stop
from engine.units import format_duration, parse_time

READ_BUDGET_SECONDS = 0.25  # per poll, so a huge history streams in without freezing the screen


class MonitorScreen(Screen):
    DEFAULT_CSS = """
    #title { height: 1; background: $primary-darken-2; color: $text; padding: 0 1; }
    #progress { height: 1; padding: 0 1; }
    #panels { height: auto; }
    #charts { grid-size: 2 1; grid-gutter: 0 1; height: 1fr; min-height: 4; }
    """
    BINDINGS = [
        # short words in the footer (80 columns hold them all), the whole sentence in the `?` list
        Binding("c", "checkpoint", "checkpoint", tooltip="save a checkpoint now (at the next step)",
                id="monitor.checkpoint"),
        Binding("s", "stop", "stop", tooltip="stop gracefully (a checkpoint first)", id="monitor.stop"),
        Binding("tab", "next_charts", "charts", id="monitor.charts"),
        Binding("1", "charts(0)", "loss", show=False, id="monitor.charts1"),
        Binding("2", "charts(1)", "charts 2 (a stage's own: rewards, KL)", show=False, id="monitor.charts2"),
        Binding("3", "charts(2)", "charts 3", show=False, id="monitor.charts3"),
        Binding("4", "charts(3)", "charts 4", show=False, id="monitor.charts4"),
        Binding("5", "charts(4)", "charts 5", show=False, id="monitor.charts5"),
        Binding("escape", "back", "sessions", id="monitor.back"),
        Binding("question_mark", "help", "keys", id="monitor.help"),
        Binding("q", "app.quit", "quit", tooltip="quit the console (the run goes on)", id="monitor.quit"),
    ]

    def __init__(self, session: Path, clock=time.time) -> None:
        super().__init__()
        self.session = Path(session)
        self.clock = clock
        self.state = MonitorState()
        self.tail = EventTail(self.session / EVENTS)
        self.chart_set = 0
        self._reading = False
        self.loaded = False  # the whole history has been read once
        self.message = ""

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="progress")
        with Horizontal(id="panels"):
            yield MemoryPanel(id="memory")
            yield SystemPanel(id="system")
        with Grid(id="charts"):
            yield MetricChart("loss", id="chart0")
            yield MetricChart("", id="chart1")
        yield EventLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self._reload_meta()
        self.poll()
        self.set_interval(0.5, self.poll)

    # ----------------------------------------------------------------- reading

    def poll(self) -> None:
        if not self._reading:
            self._reading = True
            self.run_worker(self._read, thread=True, group="tail", exclusive=True)

    def _read(self) -> None:
        batch: list[dict] = []
        start = time.monotonic()
        try:
            while time.monotonic() - start < READ_BUDGET_SECONDS:
                got = self.tail.read()
                if not got:
                    break
                batch.extend(got)
            at_end = not got if batch else True
            meta = self._meta_if_changed()
        except Exception as e:  # a damaged session.json must not kill the screen
            meta, at_end = None, True
            self.message = f"cannot read session.json: {e}"
        self.app.call_from_thread(self._apply, batch, meta, at_end)

    def _meta_if_changed(self) -> dict | None:
        """session.json only when its mtime moved: polled twice a second, it rarely changes."""
        mtime = (self.session / SESSION_JSON).stat().st_mtime_ns
        if mtime == getattr(self, "_meta_mtime", None):
            return None
        meta = read_session_json(self.session)
        self._meta_mtime = mtime
        return meta

    def _apply(self, batch: list[dict], meta: dict | None, at_end: bool) -> None:
        self._reading = False
        if meta is not None:
            self.state.meta = meta
        if batch:
            self.state.feed(batch)
        if at_end:
            self.loaded = True
        self.refresh_view()

    def _reload_meta(self) -> None:
        try:
            self.state.meta = read_session_json(self.session)
        except Exception as e:
            self.message = f"cannot read session.json: {e}"

    # ----------------------------------------------------------------- drawing

    def refresh_view(self) -> None:
        st, meta = self.state, self.state.meta
        title, prog, status = header_text(st, self.session.name, self.clock(), self.size.width, self.loaded,
                                          self.message)
        plan = meta.get("plan") or {}
        self.query_one("#title", Static).update(title)
        self.query_one("#progress", Static).update(prog)
        self.query_one(MemoryPanel).show(st, plan.get("predicted_peak_bytes"))
        self.query_one(SystemPanel).show(st)
        info = stage_info(meta)  # once a refresh: an old session's comes from the registry
        sets = chart_sets(info)
        name, keys = sets[self.chart_set % len(sets)]
        for i in range(2):
            key = keys[i] if i < len(keys) else None
            self.query_one(f"#chart{i}", MetricChart).show(
                f"{self.chart_set % len(sets) + 1}·{series_label(info, key)}" if key else "",
                st.series[key] if key else None)
        tail = []
        if status == "failed":
            tail = [f"FAILED: {meta.get('error') or st.error or 'see run.log'}"] + _log_tail(self.session, 3)
        self.query_one(EventLog).show(st.lines, tail)

    # ----------------------------------------------------------------- keys

    def action_next_charts(self) -> None:
        self.chart_set = (self.chart_set + 1) % len(chart_sets(stage_info(self.state.meta)))
        self.refresh_view()

    def action_charts(self, index: int) -> None:
        self.chart_set = index % len(chart_sets(stage_info(self.state.meta)))
        self.refresh_view()

    def action_checkpoint(self) -> None:
        if self.app.refused_read_only():
            return
        if self.state.meta.get("kind") != "train" or self.state.meta.get("status") != "running":
            self.notify("checkpoints are for running training runs", severity="warning")
            return
        request_checkpoint(self.session)
        self.notify("checkpoint requested: it is saved at the next step boundary")

    def action_stop(self) -> None:
        if self.app.refused_read_only():
            return
        meta = self.state.meta
        if meta.get("status") != "running":
            self.notify("this run is not running", severity="warning")
            return
        then = ("your script decides what happens after trainer.train() returns" if from_own_script(meta)
                else f"it can be resumed with `rounds resume {meta.get('id')}`")
        self.app.push_screen(Confirm(f"Stop {meta.get('name')} gracefully? It saves a checkpoint at the end of "
                                     f"the current step; {then}."), self._do_stop)

    def _do_stop(self, yes: bool | None) -> None:
        if not yes:
            return
        meta = self.state.meta
        request_stop(self.session)
        pid = meta.get("pid")
        # a run from the user's own script (engine.callback) acts on the request file alone: a signal
        # would meet the script's own handlers, or none, and could kill it mid-step
        if pid and meta.get("host") == socket.gethostname() and not from_own_script(meta):
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError) as e:
                self.notify(f"could not signal pid {pid}: {e}; the stop request file is there", severity="warning")
                return
        self.notify("stop requested: the run saves a checkpoint and stops")

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def action_help(self) -> None:
        self.app.push_screen(KeyHelp("Monitor", [b for b in self.BINDINGS if isinstance(b, Binding)]))



def _origin(meta: dict) -> str:
    """Where a training run comes from, for the title: the user's own script, an import, or its plan."""
    if from_own_script(meta):
        return "your own script · "
    if meta.get("imported_from"):
        return "imported · "
    if meta.get("kind", "train") != "train":
        return ""
    plan = meta.get("plan") or {}
    return f"plan {plan.get('name', '-')}{'+pre' if plan.get('precompute_ref') else ''} · "


def header_text(st: MonitorState, name: str, now: float, width: int, loaded: bool = True,
                message: str = "") -> tuple[Text, Text, str]:
    """The Monitor's title and progress lines, and the status they show (no Textual needed)."""
    meta = st.meta
    status, detail = liveness(meta, st.last_event_time, now)
    started = parse_time(meta.get("started"))
    ended = parse_time(meta.get("ended"))
    elapsed = (ended or now) - started if started else None
    colour = {"running": "green", "finished": "cyan", "failed": "red", "lost": "red", "stalled": "yellow",
              "stopped": "yellow"}.get(status, "white")
    title = Text.assemble(("rounds ", "bold"), f"· {meta.get('name', name)} · ",
                          f"{meta.get('stage') or meta.get('kind', '')} · ",
                          _origin(meta),
                          (status, f"bold {colour}"), f" · {format_duration(elapsed)}",
                          (f" · {meta['world_size']} ranks" if (meta.get("world_size") or 1) > 1 else ""),
                          (f"  {detail}" if detail else "", "yellow"))
    frac = st.fraction
    width = max(10, width - 62)
    prog = Text()
    if st.step is not None:
        prog.append(f"{st.unit} {st.step:,}/{st.max_steps or 0:,} " if st.unit != "step" else
                    f"step {st.step}/{st.max_steps or '?'} ")
        prog.append(bar(frac, width), style="green")
        prog.append(f" {100 * (frac or 0):3.0f}%")
        if status in ("running", "stalled"):
            prog.append(f"  ETA {format_duration(st.eta_seconds)}")
        if st.seconds_per_step:
            prog.append(f"  {st.seconds_per_step:.2f} s/step")
        tps = st.series["tokens_per_second"].last or st.series["items_per_second"].last
        if tps:
            unit = "tok/s" if st.series["tokens_per_second"].last else \
                f"{st.unit if st.unit in ('rows', 'questions', 'items') else 'items'}/s"
            prog.append(f"  {tps:,.0f} {unit}")
    elif st.phase and status in ("running", "stalled"):
        ph = st.phase
        done, total = ph.get("step"), ph.get("max_steps")
        prog.append(f"{ph['phase']} ", style="bold")
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            prog.append(f"{done:,}/{total:,} {ph.get('unit') or ''} ")
            prog.append(bar(done / total, width), style="cyan")
            prog.append(f" {100 * done / total:3.0f}%")
        if isinstance(ph.get("eta_seconds"), (int, float)):
            prog.append(f"  ETA {format_duration(ph['eta_seconds'])}")
        prog.append("  (before the first step)", style="dim")
    else:
        prog.append("no steps yet" if loaded else "reading the history…", style="dim")
    if message:
        prog.append(f"  {message}", style="yellow")
    return title, prog, status


def _log_tail(session: Path, n: int) -> list[str]:
    try:
        with open(session / RUN_LOG, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return [x for x in lines if x.strip()][-n:]
    except OSError:
        return []
