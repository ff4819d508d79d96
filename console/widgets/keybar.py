"""The key bar: one line at the bottom listing the screen's keys (remapped keys as remapped).

Textual's ``Footer`` makes a widget with its own styles for every key, which cost the Monitor and
Home a third of their start-up on a slow box; this is one line of text, drawn once per change of
the screen's bindings. A click on a key presses it."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widget import Widget


class KeyBar(Widget):
    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $panel; color: $text; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._text = Text()
        self._spans: list[tuple[int, int, str]] = []  # (from, to, key) of each key's cells

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._changed)
        self._changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _changed(self, screen) -> None:
        if screen is not self.screen:
            return
        accent = getattr(self.app.current_theme, "accent", None) or "yellow"
        text, spans, seen = Text(no_wrap=True, overflow="ellipsis"), [], set()
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            start = len(text)
            text.append(f" {self.app.get_key_display(binding)} ", style=f"bold {accent}" if enabled else "dim")
            text.append(f"{binding.description} ", style="" if enabled else "dim")
            spans.append((start, len(text), binding.key))
        if text != self._text:
            self._text, self._spans = text, spans
            self.refresh()

    @property
    def plain(self) -> str:
        return self._text.plain

    def render(self) -> Text:
        return self._text

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key)
                return
