"""Monitor: one run (or evaluation), live or finished, read from its session folder."""

from __future__ import annotations

import asyncio
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

from console.charts import bar
from console.screens.dialogs import Confirm, KeyHelp
from console.state import MonitorState, chart_sets, series_label, stage_info
from console.widgets import Line
from console.widgets.chart import MetricChart
from console.widgets.eventlog import EventLog
from console.widgets.keybar import KeyBar
from console.widgets.memory import MemoryPanel
from console.widgets.system import SystemPanel
from engine.session import EVENTS, SESSION_JSON, file_mode, last_events, liveness, read_session_json
from engine.session.history import History
from engine.session.layout import RUN_LOG, from_own_script
from engine.session.requests import request_checkpoint, request_stop
from engine.session.watch import FolderWatch
from engine.units import format_duration, parse_time

CATCH_UP_NOW = 256 * 1024  # events behind the history read before the first frame (about a hundredth of a second)
PREVIEW_BYTES = 256 * 1024  # without a usable history: the newest events drawn first, from the file's end
PULL_EVERY = 0.5  # while watching: at most two reads (and redraws) a second, however fast the run writes
PULL_BYTES = 2**20  # events read in one pull (a backlog is read over several, the screen kept responsive)


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
        self.history: History | None = None  # the digest being followed, once the history is read
        self.chart_set = 0
        self.loaded = False  # the whole history is in the state (from history.json, or read in the background)
        self.loading = ""  # while it is read: why history.json could not be used
        self.message = ""
        self.pulls = 0  # reads of new events while watching (tests: a growing file is followed)
        self._watch: FolderWatch | None = None
        self._pull_timer = None
        self._last_pull = 0.0
        self._meta_mtime: int | None = None

    def compose(self) -> ComposeResult:
        yield Line(id="title")
        yield Line(id="progress")
        with Horizontal(id="panels"):
            yield MemoryPanel(id="memory")
            yield SystemPanel(id="system")
        with Grid(id="charts"):
            yield MetricChart("loss", id="chart0")
            yield MetricChart("", id="chart1")
        yield EventLog(id="events")
        yield KeyBar()

    def on_mount(self) -> None:
        self._reload_meta()
        self._open_history()
        self.refresh_view()
        self._watch = FolderWatch.open(self.session)
        if self._watch is not None:
            asyncio.get_running_loop().add_reader(self._watch.fileno(), self._on_change)
        self.set_interval(1.0, self._tick)

    def on_unmount(self) -> None:
        if self._watch is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._watch.fileno())
            except RuntimeError:
                pass
            self._watch.close()
            self._watch = None

    # ----------------------------------------------------------------- reading

    def _open_history(self) -> None:
        """The first frame costs what the screen shows: the saved history (and the events written
        since), or, without a usable one, the newest events read from the file's end while the
        whole history is read in the background."""
        try:
            hist = History.load(self.session, MonitorState)
        except OSError as e:
            hist = History(self.session, MonitorState())
            hist.why = f"unreadable ({e.strerror})"
        if hist.why in ("current", "behind") and hist.behind() <= CATCH_UP_NOW:
            hist.catch_up()
            self._take(hist)
            return
        preview = MonitorState()
        preview.feed(last_events(self.session / EVENTS, PREVIEW_BYTES))
        self.state.adopt(preview)
        self.loading = hist.why if hist.why not in ("current", "behind") else "far behind"
        self.run_worker(lambda: self._read_history(hist), thread=True, group="history", exclusive=True)

    def _read_history(self, hist: History) -> None:
        """In a thread: every event not in the history, then save it for the next reader."""
        try:
            hist.catch_up()
            try:
                hist.save(file_mode(self.session))
            except OSError:
                pass  # a folder this user cannot write: the next reader reads the events again
        except Exception as e:  # noqa: BLE001 - the screen must stay up; what it could read is kept
            self.message = f"cannot read events.jsonl: {e}"
        self.app.call_from_thread(self._take, hist)

    def _take(self, hist: History) -> None:
        hist.digest.meta = self.state.meta
        self.state = hist.digest
        self.history = hist
        self.loaded, self.loading = True, ""
        self.refresh_view()
        self._schedule_pull()  # events written while it was read

    def _on_change(self) -> None:
        if self._watch is not None:
            self._watch.drain()
        self._schedule_pull()

    def _tick(self) -> None:
        """Once a second: the clock and liveness; where inotify is missing, the poll (one stat)."""
        if self._watch is None:
            self._schedule_pull()
        else:
            self.refresh_view()

    def _schedule_pull(self) -> None:
        if self._pull_timer is not None or not self.is_attached:
            return
        delay = max(0.02, self._last_pull + PULL_EVERY - time.monotonic())
        self._pull_timer = self.set_timer(delay, self._pull)

    def _pull(self) -> None:
        """New events (only the bytes written since the last read) and a changed session.json."""
        self._pull_timer = None
        self._last_pull = time.monotonic()
        if self.history is None:
            return  # the background read follows the file to its end, then hands over
        self.pulls += 1
        try:
            meta = self._meta_if_changed()
            if meta is not None:
                self.state.meta = meta
        except Exception as e:  # a damaged session.json must not kill the screen
            self.message = f"cannot read session.json: {e}"
        try:
            at_end = self.history.catch_up(max_bytes=PULL_BYTES)
        except OSError as e:
            self.message, at_end = f"cannot read events.jsonl: {e.strerror}", True
        if self.history.digest is not self.state:  # the file was replaced: its new digest
            self.history.digest.meta = self.state.meta
            self.state = self.history.digest
        self.refresh_view()
        if not at_end:
            self._schedule_pull()

    def _meta_if_changed(self) -> dict | None:
        """session.json only when its mtime moved: it rarely changes."""
        mtime = (self.session / SESSION_JSON).stat().st_mtime_ns
        if mtime == self._meta_mtime:
            return None
        meta = read_session_json(self.session)
        self._meta_mtime = mtime
        return meta

    def _reload_meta(self) -> None:
        try:
            self._meta_mtime = (self.session / SESSION_JSON).stat().st_mtime_ns
            self.state.meta = read_session_json(self.session)
        except Exception as e:
            self.message = f"cannot read session.json: {e}"

    # ----------------------------------------------------------------- drawing

    def refresh_view(self) -> None:
        """Every panel's text from the state; Textual redraws only the panels whose text changed."""
        if not self.is_attached:  # a background read that ended after the screen was closed
            return
        st, meta = self.state, self.state.meta
        loading = ""
        if not self.loaded and self.history is None:
            loading = f"reading the history… (history.json {self.loading})"
        title, prog, status = header_text(st, self.session.name, self.clock(), self.size.width, self.loaded,
                                          self.message or loading)
        plan = meta.get("plan") or {}
        self.query_one("#title", Line).set(title)
        self.query_one("#progress", Line).set(prog)
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
        else:  # opened directly (`rounds SESSION`): Home takes its place
            self.app.open_home()

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
