"""Home: every session, newest first, refreshed live; enter opens the right screen."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from console.screens.dialogs import KeyHelp
from console.widgets.keybar import KeyBar
from engine.session import SessionInfo, list_sessions, liveness, session_folders
from engine.session.layout import ASSESSMENTS
from engine.units import format_duration, human_bytes, parse_time

COLOURS = {"running": "green", "finished": "cyan", "failed": "red", "lost": "red", "stalled": "yellow",
           "stopped": "yellow", "unreadable": "red", "planned": "white"}


COLUMNS = ("name", "run", "status", "progress", "started", "time", "halluc.")
PADDING = 2  # a DataTable cell's padding, both sides
FIRST_ROWS = 40  # rows in Home's first frame (at least a screenful); then ROWS_A_FRAME at a time
ROWS_A_FRAME = 100


def _cell(i: int, value: str):
    """A cell as the table shows it: the status coloured, the rest plain text (no markup parsed)."""
    return Text(value, style=COLOURS.get(value, "") if COLUMNS[i] == "status" else "")


class HomeScreen(Screen):
    DEFAULT_CSS = """
    #host { height: 1; background: $primary-darken-2; padding: 0 1; }
    #sessions { height: 1fr; }
    /* one look for the header whatever the mouse or cursor does (also keeps snapshots stable) */
    #sessions > .datatable--header, #sessions > .datatable--header-hover,
    #sessions > .datatable--header-cursor { background: $surface; color: $accent; text-style: bold; }
    #hint { height: 1; color: $text-muted; padding: 0 1; }
    """
    BINDINGS = [
        Binding("enter", "open", "open", id="home.open"),
        Binding("space", "toggle_mark", "mark for compare", id="home.mark"),
        Binding("C", "compare", "compare marked", id="home.compare"),
        Binding("r", "refresh", "refresh", id="home.refresh"),
        Binding("question_mark", "help", "keys", id="home.help"),
        Binding("q", "app.quit", "quit", id="home.quit"),
    ]

    def __init__(self, root: Path, probe=None, clock=time.time) -> None:
        super().__init__()
        self.root = Path(root)
        self.probe = probe
        self.clock = clock
        self.infos: list[SessionInfo] = []
        self._rates: dict[str, tuple[float, str]] = {}
        self._busy = False
        self.marked: list[str] = []  # session ids marked for comparison, in marking order
        self.shown = False  # the table has been drawn with the sessions at least once
        self.complete = False  # every session has been listed (the first frame may hold the newest screenful)
        self._last_rows: list | None = None
        self._widths: list[int] = []
        self._filled = 0  # rows added to the table (a screenful first, the rest after the first frame)
        self._generation = 0

    def compose(self) -> ComposeResult:
        yield Static(id="host")
        table = DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static(f"sessions in {self.root} · enter opens one", id="hint")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.action_refresh()
        self.set_interval(2.0, self.action_refresh)

    def on_resize(self) -> None:
        self.action_refresh()  # the rows are fitted to the screen's width

    def action_refresh(self) -> None:
        if not self._busy:
            self._busy = True
            self.run_worker(self._scan, thread=True, group="scan", exclusive=True)

    def _scan(self) -> None:
        folders = session_folders(self.root)
        host = self.probe.sample() if self.probe else None
        if not self.shown and len(folders) > FIRST_ROWS:  # the first frame: the newest screenful, then the rest
            first = list_sessions(self.root, folders[:FIRST_ROWS])
            rates = {i.id: self._rate(i) for i in first if i.kind == "eval"}
            self.app.call_from_thread(self._show, first, rates, host, len(folders), False)
        infos = list_sessions(self.root, folders)
        rates = {i.id: self._rate(i) for i in infos if i.kind == "eval"}
        self.app.call_from_thread(self._show, infos, rates, host)

    def _rate(self, info: SessionInfo) -> str:
        marks = info.path / ASSESSMENTS
        try:
            mtime = marks.stat().st_mtime
        except OSError:
            return ""
        cached = self._rates.get(info.id)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            from engine.report import session_report

            pooled = session_report(info.path)["pooled"]
            lo, hi = pooled["ci95"]
            text = (f"{100 * pooled['rate']:.0f}% ({100 * lo:.0f}–{100 * hi:.0f})"
                    if pooled["judged"] else "")
        except Exception:
            text = "?"
        self._rates[info.id] = (mtime, text)
        return text

    def _show(self, infos: list[SessionInfo], rates: dict[str, str], host: dict | None, total: int | None = None,
              complete: bool = True) -> None:
        self._busy = not complete
        self.infos = infos
        self.complete = self.complete or complete
        self.query_one("#host", Static).update(self._host_line(host, total or len(infos)))
        rows = home_rows(infos, self.clock(), self.marked, rates, width=self.size.width or None)
        if rows == self._last_rows:
            return  # nothing changed: leave the table (and the cursor) alone
        table = self.query_one(DataTable)
        widths = [max([len(label)] + [len(str(cells[i])) for _, cells in rows]) for i, label in enumerate(COLUMNS)]
        last = self._last_rows
        if last is not None and widths == self._widths and [k for k, _ in last] == [k for k, _ in rows] \
                and self._filled == len(rows):
            # the same sessions in the same order: only the cells that changed (a running run's progress)
            for (key, cells), (_, old) in zip(rows, last, strict=True):
                for i, (new, was) in enumerate(zip(cells, old, strict=True)):
                    if new != was:
                        table.update_cell(key, COLUMNS[i], _cell(i, new))
            self._last_rows = rows
            return
        self._last_rows, self._widths = rows, widths
        keep = table.cursor_row
        # the columns' widths are set here from the rows: a DataTable measures new rows only when its
        # message pump next goes idle, and a table filled during its first frame could keep its header's
        # widths (names cut to four letters) until something else changed it
        table.clear(columns=True)
        for i, label in enumerate(COLUMNS):
            table.add_column(label, width=widths[i], key=label)
        # a screenful first (the first frame costs what it shows), the rest a chunk a frame after it
        self._generation += 1
        self._filled = 0
        self._fill(self._generation, max(FIRST_ROWS, self.size.height + 10), keep)
        self.call_after_refresh(self._drawn)
        if not infos:
            self.query_one("#hint", Static).update(
                f"no sessions in {self.root} yet: start one with `rounds train` or `rounds eval` "
                "(elsewhere: --sessions DIR or $ROUNDS_SESSIONS)")

    def _fill(self, generation: int, count: int, keep: int) -> None:
        """Add the next ``count`` rows (unless the table was rebuilt since), then schedule the rest."""
        if generation != self._generation:
            return
        table, rows = self.query_one(DataTable), self._last_rows
        start, end = self._filled, min(len(rows), self._filled + count)
        for key, cells in rows[start:end]:
            table.add_row(*(_cell(i, c) for i, c in enumerate(cells)), key=key)
        self._filled = end
        if rows and (keep < end or end == len(rows)):
            table.move_cursor(row=min(max(0, keep), end - 1))
        if end < len(rows):  # the next chunk once this one is on the screen
            self.call_after_refresh(lambda: self.set_timer(0.05, lambda: self._fill(generation, ROWS_A_FRAME, keep)))

    def _drawn(self) -> None:
        self.shown = True

    def _host_line(self, host: dict | None, n: int) -> Text:
        out = Text.assemble(("rounds ", "bold"), f"· {n} session{'s' if n != 1 else ''} · ")
        if not host:
            return out
        gpus = host.get("gpus") or []
        if gpus:
            for g in gpus:
                out.append(f"GPU{g.get('index')} {human_bytes(g.get('mem_used'))}/{human_bytes(g.get('mem_total'))} "
                           f"{g.get('util', 'N/A')}% · ")
        else:
            out.append("GPU N/A · ", style="dim")
        h = host.get("host") or {}
        out.append(f"CPU {h.get('cpu_percent', 'N/A')}% · RAM {human_bytes(h.get('ram_used'))}/"
                   f"{human_bytes(h.get('ram_total'))}")
        return out

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if not self.infos or table.cursor_row is None:
            return
        info = self.infos[table.cursor_row]
        if info.status == "unreadable":
            self.notify(info.error or "unreadable session", severity="error", timeout=10)
            return
        if info.kind == "eval" and info.status == "finished":
            import os

            from console.screens.assess import AssessScreen

            annotator = getattr(self.app, "annotator", None) or os.environ.get("USER") or "annotator"
            self.app.push_screen(AssessScreen(info.path, annotator, read_only=self.app.read_only))
            return
        from console.screens.monitor import MonitorScreen

        self.app.push_screen(MonitorScreen(info.path, clock=self.clock))

    def action_toggle_mark(self) -> None:
        table = self.query_one(DataTable)
        if not self.infos or table.cursor_row is None:
            return
        info = self.infos[table.cursor_row]
        if info.kind != "eval":
            self.notify("only evaluation sessions can be compared", severity="warning")
            return
        if info.id in self.marked:
            self.marked.remove(info.id)
        else:
            self.marked = (self.marked + [info.id])[-2:]
        self.notify(f"marked for comparison: {', '.join(self.marked) or 'none'}"
                    + ("  (C compares them)" if len(self.marked) == 2 else ""))
        self.action_refresh()

    def action_compare(self) -> None:
        if len(self.marked) != 2:
            self.notify("mark two evaluation sessions with space first", severity="warning")
            return
        from console.screens.compare import CompareScreen

        a, b = (self.root / m for m in self.marked)
        try:
            self.app.push_screen(CompareScreen(a, b))
        except Exception as e:  # e.g. a session with no marks yet
            self.notify(str(e), severity="error", timeout=10)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_help(self) -> None:
        self.app.push_screen(KeyHelp("Sessions", [b for b in self.BINDINGS if isinstance(b, Binding)]))


class _Row(NamedTuple):
    id: str
    name: str  # with the compare mark
    tag: str  # " #2" for the second run of one name: kept whole when the name is cut
    run: str
    status: str
    percent: str
    steps: str
    started: float | None
    duration: str
    rate: str

    def cells(self, short_progress: bool, short_start: bool, today: str) -> list[str]:
        return [self.name + self.tag, self.run, self.status, self.percent + ("" if short_progress else self.steps),
                _start_text(self.started, short_start, today), self.duration, self.rate]


def _start_text(started: float | None, short: bool, today: str) -> str:
    if not started:
        return ""
    local = time.localtime(started)
    if not short:
        return time.strftime("%m-%d %H:%M", local)
    return time.strftime("%H:%M" if time.strftime("%Y-%m-%d", local) == today else "%m-%d", local)


def _table_width(cells: list[list[str]]) -> int:
    return sum(max([len(label), *(len(c[k]) for c in cells)]) + PADDING
               for k, label in enumerate(COLUMNS)) + 1  # the table's scrollbar


def home_rows(infos: list[SessionInfo], now: float, marked: set[str], rates: dict[str, str],
              width: int | None = None) -> list[tuple]:
    """(session id, the row's cells) for each session, as Home shows them (no Textual needed).
    Runs of one name are numbered oldest first (``#1``, ``#2``); with ``width`` (the screen's cells) the
    rows are fitted to it: steps dropped from progress, then a shorter start, then names cut."""
    names = Counter(i.name or i.id for i in infos)
    order: dict[str, int] = {}
    seen: Counter = Counter()
    for i in sorted(infos, key=lambda i: (i.created or "", i.id)):
        seen[i.name or i.id] += 1
        order[i.id] = seen[i.name or i.id]
    rows = []
    for i in infos:
        status, _ = liveness(i.meta, i.last_event_time, now) if i.meta else (i.status, "")
        started = parse_time(i.started or i.created)
        ended = parse_time(i.ended)
        duration = (ended or now) - started if started and status != "planned" else None
        name = i.name or i.id
        progress = (f"{100 * i.progress:.0f}%", f" {i.step}/{i.total_steps}") if i.progress is not None else ("", "")
        rows.append(_Row(i.id, ("● " if i.id in marked else "") + name,
                         f" #{order[i.id]}" if names[name] > 1 else "",
                         " ".join(dict.fromkeys(x for x in (i.kind, i.stage) if x)),  # "train dpo"; "eval" once
                         status, *progress, started, format_duration(duration) if duration is not None else "",
                         rates.get(i.id, "")))
    today = time.strftime("%Y-%m-%d", time.localtime(now))
    for short_progress, short_start in ((False, False), (True, False), (True, True)):
        cells = [r.cells(short_progress, short_start, today) for r in rows]
        if not width or _table_width(cells) <= width:
            break
    over = _table_width(cells) - width if width else 0
    if over > 0 and cells:  # the names give way last, never below 10 cells; a run's #n stays
        keep = max(10, max(len(c[0]) for c in cells) - over)
        for r, c in zip(rows, cells, strict=True):
            if len(c[0]) > keep:
                c[0] = r.name[: max(1, keep - len(r.tag) - 1)] + "…" + r.tag
    return [(r.id, tuple(c)) for r, c in zip(rows, cells, strict=True)]
