"""The Monitor's widgets. Each draws a pure function's text (tested without a terminal) and
redraws only when that text changes (``TextPanel.changed``)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class TextPanel(Static):
    """A panel whose content is ``text(width, height)``. ``changed()`` recomputes it and asks
    Textual to redraw only when it differs from what is shown (a layout pass only when a panel of
    automatic height gains or loses a line): watching a run redraws what moved, not the screen."""

    AUTO_HEIGHT = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: Text | None = None

    def text(self, width: int, height: int) -> Text:
        raise NotImplementedError

    def changed(self) -> bool:
        new = self.text(self.size.width, self.size.height)
        if self._shown is not None and new == self._shown:
            return False
        layout = self.AUTO_HEIGHT and (self._shown is None or
                                       new.plain.count("\n") != self._shown.plain.count("\n"))
        self._shown = new
        self.refresh(layout=layout)
        return True

    def render(self) -> Text:
        self._shown = self.text(self.size.width, self.size.height)
        return self._shown


class Line(TextPanel):
    """One line of text set from outside (the Monitor's title and progress)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.value = Text()

    def set(self, value: Text) -> bool:
        self.value = value
        return self.changed()

    def text(self, width: int, height: int) -> Text:
        return self.value
