"""Compare: two sessions' rates, the paired table and exact McNemar p, and the items whose verdict changed."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from console.widgets.keybar import KeyBar
from engine.report import compare, compare_markdown, item_labels
from engine.session.records import read_results

STYLE = {"hallucinated": "bold red", "faithful": "bold green", "abstained": "bold cyan"}


class SideBySide(ModalScreen[None]):
    DEFAULT_CSS = """
    SideBySide { align: center middle; }
    SideBySide > Vertical { width: 96%; height: 90%; border: thick $primary; background: $surface; }
    SideBySide Horizontal { height: 1fr; }
    SideBySide VerticalScroll { width: 1fr; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q,enter", "close", "close", id="side.close")]

    def __init__(self, question: str, reference: str, left: tuple[str, str, str], right: tuple[str, str, str]):
        super().__init__()
        self.question, self.reference, self.left, self.right = question, reference, left, right

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text.assemble(("QUESTION ", "bold"), self.question, "\n", ("REFERENCE ", "bold"),
                                       self.reference))
            with Horizontal():
                for name, label, answer in (self.left, self.right):
                    with VerticalScroll():
                        yield Static(Text.assemble((f"{name}\n", "bold"), (label, STYLE.get(label, "")), "\n\n",
                                                   answer or "(empty)"))
            yield Static("esc closes", classes="dim")

    def action_close(self) -> None:
        self.dismiss(None)


class CompareScreen(Screen):
    DEFAULT_CSS = """
    #summary { height: auto; padding: 0 1; }
    #changed { height: 1fr; border-top: solid $primary-darken-2; }
    """
    BINDINGS = [Binding("q,escape", "back", "back", id="compare.quit")]

    def __init__(self, a: Path, b: Path, annotator: str | None = None) -> None:
        super().__init__()
        self.a, self.b = Path(a), Path(b)
        self.result = compare(self.a, self.b, annotator)
        self.la, self.items_a, _ = item_labels(self.a, annotator)
        self.lb, self.items_b, _ = item_labels(self.b, annotator)
        self.results_a = {r["id"]: r for r in read_results(self.a)}
        self.results_b = {r["id"]: r for r in read_results(self.b)}

    def compose(self) -> ComposeResult:
        yield Static(Text(compare_markdown(self.result)), id="summary")
        changed = sorted(i for i in set(self.la) & set(self.lb) if self.la[i] != self.lb[i])
        options = [Option(f"{i}: A {self.la[i]} → B {self.lb[i]}", id=i) for i in changed]
        yield OptionList(*options, id="changed") if options else Static("no item changed its verdict", id="changed")
        yield KeyBar()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.exit()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        i = event.option.id
        ra, rb = self.results_a[i], self.results_b[i]
        self.app.push_screen(SideBySide(ra["question"], ra.get("reference") or "",
                                        (f"A: {self.a.name}", self.la[i], ra.get("answer") or ""),
                                        (f"B: {self.b.name}", self.lb[i], rb.get("answer") or "")))
