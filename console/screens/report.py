"""Report: rates with intervals per annotator and pooled, categories, agreement; export."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from console.widgets.keybar import KeyBar
from engine.report import report_markdown, session_report, write_report


class ReportScreen(Screen[str | None]):
    DEFAULT_CSS = """
    #report-scroll { height: auto; max-height: 70%; padding: 0 1; }
    #items { height: 1fr; border-top: solid $primary-darken-2; }
    """
    BINDINGS = [
        Binding("e", "export", "export", id="report.export"),
        Binding("escape,q", "back", "back", id="report.back"),
    ]

    def __init__(self, session: Path) -> None:
        super().__init__()
        self.session = Path(session)
        self.rep = session_report(self.session)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="report-scroll"):  # the judges' agreement tables can run long
            yield Static(Text(report_markdown(self.rep)), id="report")
        items = [Option(f"{i}  unsure", id=i) for i in self.rep["unsure"]]
        items += [Option(f"{i}  annotators disagree", id=i) for i in self.rep["disagreements"]
                  if i not in self.rep["unsure"]]
        yield OptionList(*items, id="items") if items else Static("no unsure or disputed items", id="items")
        yield KeyBar()

    def on_mount(self) -> None:
        # the list of items to jump to has the keys; the report above scrolls with the mouse or after tab
        items = self.query_one("#items")
        if isinstance(items, OptionList):
            items.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_export(self) -> None:
        from engine.session.records import export_marks_csv

        if self.app.refused_read_only():  # a console that only watches writes nothing into sessions
            return

        write_report(self.session)
        export_marks_csv(self.session)
        self.notify(f"wrote report.md, report.json and assessments.csv in {self.session}")

    def action_back(self) -> None:
        self.dismiss(None)
