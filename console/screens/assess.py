"""Assess: one item at a time, one key per decision, every mark on disk before the screen moves."""

from __future__ import annotations

import re
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Static

from console.assess_state import AssessModel
from console.screens.dialogs import KeyHelp
from console.widgets.keybar import KeyBar
from engine.assessment import CATEGORIES

SHORT = {"fabricated_reference": "fake reference"}
LABEL_STYLE = {"hallucinated": "bold red", "faithful": "bold green", "abstained": "bold cyan",
               "unsure": "bold yellow"}


def highlight(text: str, words: list[str], style: str) -> Text:
    out = Text(text or "")
    for w in words:
        for m in re.finditer(re.escape(w.split()[0]), text or ""):
            out.stylize(style, m.start(), m.end())
    return out


class Ask(ModalScreen[str | None]):
    """A one-line input (note, search text, item number)."""

    DEFAULT_CSS = """
    Ask { align: center middle; }
    Ask > Vertical { width: 70; height: auto; border: thick $primary; padding: 1 2; background: $surface; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel", id="ask.cancel")]

    def __init__(self, prompt: str, value: str = "") -> None:
        super().__init__()
        self.prompt, self.value = prompt, value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.prompt)
            yield Input(value=self.value, id="answer")
            yield Static("enter to accept · esc to cancel", classes="dim")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class AssessScreen(Screen):
    DEFAULT_CSS = """
    #stats { height: 2; background: $primary-darken-2; padding: 0 1; }
    #item { height: 1fr; padding: 0 1; }
    #marks { height: auto; max-height: 8; padding: 0 1; border-top: solid $primary-darken-2; }
    """
    BINDINGS = [
        Binding("h", "mark('hallucinated')", "hallucinated", id="assess.hallucinated"),
        Binding("f", "mark('faithful')", "faithful", id="assess.faithful"),
        Binding("u", "mark('unsure')", "unsure", id="assess.unsure"),
        Binding("a", "mark('abstained')", "abstained", id="assess.abstained"),
        *[Binding(str(n), f"category({n})", CATEGORIES[n], show=False, id=f"assess.category{n}") for n in CATEGORIES],
        Binding("m", "severity", "severity", show=False, id="assess.severity"),
        Binding("n", "note", "note", show=False, id="assess.note"),
        Binding("z,backspace", "undo", "undo", id="assess.undo"),
        Binding("j,down,right", "move(1)", "next", show=False, id="assess.next"),
        Binding("k,up,left", "move(-1)", "previous", show=False, id="assess.previous"),
        Binding("J", "next_unassessed", "next unassessed", show=False, id="assess.next_unassessed"),
        Binding("slash", "search", "search", show=False, id="assess.search"),
        Binding("g", "goto", "go to", show=False, id="assess.goto"),
        Binding("F", "filter", "filter", show=False, id="assess.filter"),
        Binding("o", "order", "order", show=False, id="assess.order"),
        Binding("t", "context", "context", show=False, id="assess.context"),
        Binding("r", "report", "report", id="assess.report"),
        Binding("question_mark", "help", "keys", id="assess.help"),
        Binding("q,escape", "quit", "quit", id="assess.quit"),
    ]

    def __init__(self, session: Path, annotator: str, blind: bool = False, read_only: str | None = None) -> None:
        super().__init__()
        self.model = AssessModel(session, annotator, blind, read_only=read_only)
        self.show_context = False
        self.message = ""

    def compose(self) -> ComposeResult:
        yield Static(id="stats")
        with VerticalScroll(id="item"):
            yield Static(id="body")
        yield Static(id="marks")
        yield KeyBar()

    def on_mount(self) -> None:
        notes = []
        if self.model.readonly_reason:
            notes.append(self.model.readonly_reason)
        for p in self.model.problems:
            notes.append(f"assessments.jsonl line {p.line}: {p.message}")
        if notes:
            self.notify("\n".join(notes), severity="warning", timeout=15)
        self.redraw()

    # ----------------------------------------------------------------- drawing

    def redraw(self) -> None:
        m = self.model
        st = m.stats()
        # the filter and order first: a long name or stats line is cut at the screen's edge, they never are
        head = Text.assemble(("assess ", "bold"),
                             (f"filter: {m.filter} ({len(m.visible())}) · " if m.filter != "all" else "",
                              "bold yellow"),
                             (f"{m.order} · " if m.order != "as listed" else "", "yellow"),
                             f"{m.name} · {m.annotator}",
                             (" · blind" if m.blind else "", "dim"),
                             (f" · {m.readonly_reason}" if m.readonly_reason else "", "bold yellow"), "\n")
        if st["judged"]:
            head.append(f"assessed {st['assessed']}/{st['total']} · hallucinated {st['hallucinated']} · rate "
                        f"{100 * st['rate']:.1f}% (95% CI {100 * st['lo']:.1f}–{100 * st['hi']:.1f}%)")
            if st["abstained"]:
                head.append(f" · abstained {st['abstained']}")
            if st["short"]:
                head.append(f" · assess the {st['more']} left (±10 points needs {st['short']} more than exist)")
            elif st["more"]:
                head.append(f" · ≈ {st['more']} more for ±10 points")
        else:
            head.append(f"assessed {st['assessed']}/{st['total']} · no item judged yet (h, f, a or u)")
        self.query_one("#stats", Static).update(head)
        item = m.item
        body = Text()
        if item is None:
            body.append("this session has no results", style="dim")
        else:
            fl = item.get("flags") or {}
            body.append(f"item {m.pos + 1}/{len(m.items)} · id {item['id']}", style="dim")
            if fl.get("count"):
                body.append(f" · pre-screen flags {fl['count']}", style="yellow")
            body.append("\n\nQUESTION\n", style="bold")
            body.append(item.get("question") or "")
            if item.get("context"):
                if self.show_context:
                    body.append("\n\nCONTEXT\n", style="bold")
                    body.append(item["context"])
                else:
                    body.append(f"\n\nCONTEXT ({len(item['context'])} characters, t shows it)", style="dim")
            body.append("\n\nREFERENCE\n", style="bold")
            body.append(item.get("reference") or "")
            body.append("\n\nMODEL ANSWER\n", style="bold")
            answer = highlight(item.get("answer") or "", fl.get("numbers_absent", []), "bold white on red")
            for term in fl.get("terms_absent", []):
                for mt in re.finditer(re.escape(term), item.get("answer") or ""):
                    answer.stylize("bold black on yellow", mt.start(), mt.end())
            body.append(answer if item.get("answer") else Text("(empty answer)", style="italic red"))
            reasons = [k for k in ("empty", "truncated", "repetitive") if fl.get(k)]
            if fl.get("numbers_absent") or fl.get("terms_absent") or reasons:
                body.append("\n\n")
                if fl.get("numbers_absent"):
                    body.append(f"numbers not in the reference: {', '.join(fl['numbers_absent'])}  ", style="red")
                if fl.get("terms_absent"):
                    body.append(f"terms not in the reference: {', '.join(fl['terms_absent'])}  ", style="yellow")
                if reasons:
                    body.append(" ".join(reasons), style="magenta")
        self.query_one("#body", Static).update(body)
        self.query_one("#item", VerticalScroll).scroll_home(animate=False)
        self.query_one("#marks", Static).update(self._marks_text())

    def _marks_text(self) -> Text:
        m, item = self.model, self.model.item
        out = Text()
        if item is None:
            return out
        mine = m.mine(item["id"])
        details = m.current_details()
        out.append("your mark: ", style="bold")
        if mine:
            out.append(mine.label, style=LABEL_STYLE.get(mine.label, ""))
        else:
            out.append("none", style="dim")
        cats = " ".join(f"[{n}]{SHORT.get(name, name)}" if name in details.categories
                        else f" {n} {SHORT.get(name, name)}" for n, name in CATEGORIES.items())
        out.append(f" · severity {details.severity or '-'}")
        if details.note:
            out.append(f" · note: {details.note}")
        out.append("\n" + cats, style="cyan")
        for o in m.others(item["id"]):
            out.append(f"\n{o.annotator}: ", style="dim")
            out.append(o.label, style=LABEL_STYLE.get(o.label, ""))
        for j in sorted(m.judgements(item["id"]), key=lambda x: x.annotator):
            out.append(f"\njudge {j.annotator[len('auto:'):]}: ", style="dim")
            out.append(j.label, style=LABEL_STYLE.get(j.label, ""))
            if j.score is not None:
                out.append(f" {j.score:.2f}")
            if j.note:
                out.append(f" · {j.note}", style="dim")
        if self.message:
            out.append(f"\n{self.message}", style="yellow")
        return out

    # ----------------------------------------------------------------- keys

    def _guard(self) -> bool:
        if self.model.item is None:
            return False
        if self.model.log is None:
            self.notify(self.model.readonly_reason or "read-only", severity="warning")
            return False
        return True

    def action_mark(self, label: str) -> None:
        if self._guard():
            self.model.mark(label)
            self.message = ""
            self.redraw()

    def action_category(self, n: int) -> None:
        if self._guard():
            self.model.toggle_category(n)
            self.redraw()

    def action_severity(self) -> None:
        if self._guard():
            self.model.cycle_severity()
            self.redraw()

    def action_note(self) -> None:
        if self._guard():
            self.app.push_screen(Ask("note for this item:", self.model.current_details().note), self._got_note)

    def _got_note(self, text: str | None) -> None:
        if text is not None:
            self.model.set_note(text)
        self.redraw()

    def action_undo(self) -> None:
        if self._guard():
            m = self.model.undo()
            self.message = f"undid the last mark on {m.item}" if m else "nothing to undo"
            self.redraw()

    def action_move(self, delta: int) -> None:
        self.model.move(delta)
        self.message = ""
        self.redraw()

    def action_next_unassessed(self) -> None:
        self.message = "" if self.model.next_unassessed() else "every item is assessed"
        self.redraw()

    def action_search(self) -> None:
        self.app.push_screen(Ask("search (id, question, reference, answer):"), self._got_search)

    def _got_search(self, text: str | None) -> None:
        if text:
            self.message = "" if self.model.search(text) else f"no item matches {text!r}"
        self.redraw()

    def action_goto(self) -> None:
        self.app.push_screen(Ask(f"go to item number (1–{len(self.model.items)}):"), self._got_goto)

    def _got_goto(self, text: str | None) -> None:
        if text:
            ok = text.strip().isdigit() and self.model.goto(int(text))
            self.message = "" if ok else f"no item number {text!r}"
        self.redraw()

    def action_filter(self) -> None:
        self.model.cycle_filter()
        self.redraw()

    def action_order(self) -> None:
        self.model.cycle_order()
        self.message = ""
        self.redraw()

    def action_context(self) -> None:
        self.show_context = not self.show_context
        self.redraw()

    def action_report(self) -> None:
        from console.screens.report import ReportScreen

        self.app.push_screen(ReportScreen(self.model.session), self._jump)

    def _jump(self, item_id: str | None) -> None:
        if item_id and item_id in self.model.index_of:
            self.model.pos = self.model.index_of[item_id]
        self.redraw()

    def action_help(self) -> None:
        self.app.push_screen(KeyHelp("Assess", [b for b in self.BINDINGS if isinstance(b, Binding)]))

    def action_quit(self) -> None:
        self.model.close()
        if len(self.app.screen_stack) > 2:  # opened from Home: back to the sessions
            self.app.pop_screen()
        else:
            self.app.exit()
