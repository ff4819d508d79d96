"""The Textual app: Home (the sessions) and Monitor (one run), over a sessions folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from textual.app import App

from console.screens.home import HomeScreen


class RoundsApp(App):
    TITLE = "rounds"
    CSS = """
    Screen { background: $surface; }
    """

    def __init__(self, root: Path, session: Path | None = None, probe=None, clock=time.time,
                 assess: tuple[Path, str, bool] | None = None,
                 compare: tuple[Path, Path, str | None] | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.start_session = session
        self.probe = probe
        self.clock = clock
        self.assess = assess
        self.compare = compare

    def on_mount(self) -> None:
        keymap = load_keymap()
        if keymap:
            self.set_keymap(keymap)
        if self.compare is not None:
            from console.screens.compare import CompareScreen

            self.push_screen(CompareScreen(*self.compare))
            return
        if self.assess is not None:
            from console.screens.assess import AssessScreen

            session, annotator, blind = self.assess
            self.push_screen(AssessScreen(session, annotator, blind))
            return
        self.push_screen(HomeScreen(self.root, probe=self.probe, clock=self.clock))
        if self.start_session is not None:
            from console.screens.monitor import MonitorScreen

            self.push_screen(MonitorScreen(self.start_session, clock=self.clock))


def keymap_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(os.environ.get("ROUNDS_KEYMAP") or Path(base) / "rounds" / "keymap.json")


def load_keymap() -> dict[str, str]:
    """Remapped keys, by binding id: {"assess.hallucinated": "x", "monitor.stop": "ctrl+s"}."""
    path = keymap_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def run_assess(root: Path, session: Path, annotator: str, blind: bool = False) -> int:
    RoundsApp(root, assess=(session, annotator, blind)).run()
    return 0


def run_compare(root: Path, a: Path, b: Path, annotator: str | None) -> int:
    RoundsApp(root, compare=(a, b, annotator)).run()
    return 0


def run_console(root: Path, session: Path | None = None) -> int:
    from engine.probe import SystemProbe

    RoundsApp(root, session, probe=SystemProbe()).run()
    return 0
