"""The Textual app: Home (the sessions) and Monitor (one run), over a sessions folder."""

from __future__ import annotations

import time
from pathlib import Path

from textual.app import App

from console.screens.home import HomeScreen


class RoundsApp(App):
    TITLE = "rounds"
    CSS = """
    Screen { background: $surface; }
    """

    def __init__(self, root: Path, session: Path | None = None, probe=None, clock=time.time) -> None:
        super().__init__()
        self.root = Path(root)
        self.start_session = session
        self.probe = probe
        self.clock = clock

    def on_mount(self) -> None:
        self.push_screen(HomeScreen(self.root, probe=self.probe, clock=self.clock))
        if self.start_session is not None:
            from console.screens.monitor import MonitorScreen

            self.push_screen(MonitorScreen(self.start_session, clock=self.clock))


def run_console(root: Path, session: Path | None = None) -> int:
    from engine.probe import SystemProbe

    RoundsApp(root, session, probe=SystemProbe()).run()
    return 0
