"""Small modal screens: a yes/no confirmation and the key help of the current screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class Confirm(ModalScreen[bool]):
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: 60; height: auto; border: thick $warning; padding: 1 2; background: $surface; }
    """
    BINDINGS = [Binding("y", "answer(True)", "yes", id="confirm.yes"),
                Binding("n,escape", "answer(False)", "no", id="confirm.no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            yield Static("[b]y[/b] yes    [b]n[/b] / esc no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


# what a person presses, for Textual's key names
KEY_NAMES = {"question_mark": "?", "escape": "esc", "slash": "/", "full_stop": ".", "comma": ",", "plus": "+",
             "minus": "-", "left_square_bracket": "[", "right_square_bracket": "]", "less_than_sign": "<",
             "greater_than_sign": ">", "up": "↑", "down": "↓", "left": "←", "right": "→", "pageup": "pgup",
             "pagedown": "pgdn"}


def key_label(keys: str) -> str:
    """``escape,question_mark`` -> ``esc / ?``; ``ctrl+slash`` -> ``ctrl+/``."""
    def one(key: str) -> str:
        *mods, name = key.strip().split("+")
        return "+".join([*mods, KEY_NAMES.get(name, name)])

    return " / ".join(one(k) for k in keys.split(",") if k.strip())


class KeyHelp(ModalScreen[None]):
    DEFAULT_CSS = """
    KeyHelp { align: center middle; }
    KeyHelp > VerticalScroll { width: 64; max-width: 100%; height: auto; max-height: 90%; border: thick $primary;
                               padding: 0 1; background: $surface; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "close", id="help.close")]

    def __init__(self, title: str, bindings: list[Binding]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = bindings

    def compose(self) -> ComposeResult:
        lines = [f"[b]{self.title_text}: keys[/b]", ""]
        for b in self.keys:
            lines.append(f"  [b]{key_label(b.key):<14}[/b] {b.tooltip or b.description}")
        lines += ["", "  [b]ctrl+p[/b]         command palette", "", "esc closes this (↑ ↓ scroll)"]
        with VerticalScroll():
            yield Static("\n".join(lines))

    def action_close(self) -> None:
        self.dismiss(None)
