"""The Textual app: Home (the sessions) and Monitor (one run), over a sessions folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from textual.app import App

READ_ONLY_ENV = "ROUNDS_READ_ONLY"  # set (to the reason) by `rounds serve` without --allow-control


class RoundsApp(App):
    TITLE = "rounds"
    CSS = """
    Screen { background: $surface; }
    """

    def __init__(self, root: Path, session: Path | None = None, probe=None, clock=time.time,
                 assess: tuple[Path, str, bool] | None = None,
                 compare: tuple[Path, Path, str | None] | None = None,
                 follow_demo: int | None = None) -> None:
        super().__init__()
        self.follow_demo = follow_demo  # the pid of a demo pipeline to follow: its runs, then its comparison
        self._followed: Path | None = None  # the run whose Monitor the follower opened
        self.root = Path(root)
        self.start_session = session
        self.probe = probe
        self.clock = clock
        self.assess = assess
        self.compare = compare
        # a console that only watches: no stop, no checkpoint, no marks (the reason is what it says)
        self.read_only: str | None = os.environ.get(READ_ONLY_ENV) or None

    def refused_read_only(self) -> bool:
        """For a key that would act on a run or write into a session: refuse it, saying why, when
        this console only watches."""
        if self.read_only:
            self.notify(f"read-only: {self.read_only}", severity="warning", timeout=8)
        return bool(self.read_only)

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
            self.push_screen(AssessScreen(session, annotator, blind, read_only=self.read_only))
            return
        if self.start_session is not None:  # Home is made when it is asked for (escape): the Monitor opens first
            from console.screens.monitor import MonitorScreen

            self.push_screen(MonitorScreen(self.start_session, clock=self.clock))
            self._followed = self.start_session
        else:
            self.open_home()
        if self.follow_demo is not None:
            self.set_interval(1.0, self._follow_demo)

    def open_home(self) -> None:
        """Home in place of the screen shown (or first): the sessions."""
        from console.screens.home import HomeScreen

        home = HomeScreen(self.root, probe=self.probe, clock=self.clock)
        if len(self.screen_stack) > 1:
            self.switch_screen(home)
        else:
            self.push_screen(home)

    def _follow_demo(self) -> None:
        """Follow a demo pipeline: the Monitor moves to each new training run, and the console
        ends on the comparison of the two evaluations. Only while the person is still on the
        Monitor the follower opened: once they go elsewhere, it only tells them."""
        from engine.demo import STATE

        try:
            state = json.loads((self.root / STATE).read_text())
        except (OSError, json.JSONDecodeError):
            return
        if not isinstance(state, dict) or state.get("pid") != self.follow_demo:
            return
        from console.screens.monitor import MonitorScreen
        from engine.session import pid_alive

        if state.get("error") or (not state.get("done") and not pid_alive(self.follow_demo)):
            self.follow_demo = None
            self.notify(f"the demo stopped: {state.get('error') or 'its process is gone'} "
                        f"(see {self.root / 'demo.log'})", severity="error", timeout=60)
            return

        on_ours = isinstance(self.screen, MonitorScreen) and self.screen.session == self._followed
        if state.get("done"):
            self.follow_demo = None
            a, b = self.root / str(state.get("eval_sft")), self.root / str(state.get("eval_dpo"))
            if on_ours:
                from console.screens.compare import CompareScreen

                self.push_screen(CompareScreen(a, b, state.get("annotator")))
            else:
                self.notify(f"the demo finished: rounds compare {a.name} {b.name} --tui", timeout=30)
            return
        session = self.root / str(state.get("session") or "")
        if (state.get("stage") or "").startswith("demo-") and (session / "session.json").is_file() \
                and session != self._followed and on_ours:
            try:
                from engine.session import read_session_json

                if read_session_json(session).get("kind") != "train":
                    return
            except Exception:
                return
            self.pop_screen()
            self.push_screen(MonitorScreen(session, clock=self.clock))
            self._followed = session


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


def run_console(root: Path, session: Path | None = None, follow_demo: int | None = None) -> int:
    from engine.probe import SystemProbe

    RoundsApp(root, session, probe=SystemProbe(), follow_demo=follow_demo).run()
    return 0
