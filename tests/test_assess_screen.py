"""The assessment screen, driven by keys: marking, categories, undo, moving, filters, search, crash safety."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_rounds
from console.app import RoundsApp
from console.screens.assess import AssessScreen
from console.screens.report import ReportScreen
from engine.assessment import ASSESSMENTS, AssessmentLog, current, read_marks
from engine.stats import wilson_interval


def make_session(root: Path, n: int = 12, name: str = "items") -> Path:
    f = root / f"{name}.csv"
    root.mkdir(parents=True, exist_ok=True)
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "reference", "answer"])
        for i in range(n):
            w.writerow([f"q{i}", f"What is the dose of Drug{i}?", f"Drug{i} is {i} mg daily.",
                        f"Drug{i} is {i + 50} mg daily, like Zorvamab." if i % 3 == 0 else f"Drug{i} is {i} mg daily."])
    r = run_rounds("--sessions", str(root), "import-results", str(f), "--name", name)
    assert r.returncode == 0, r.stderr
    return next(p for p in root.iterdir() if p.name.endswith(name))


def app_for(session: Path, annotator="alice", blind=False) -> RoundsApp:
    return RoundsApp(session.parent, assess=(session, annotator, blind))


def my_state(session: Path, annotator="alice"):
    marks, _ = read_marks(session / ASSESSMENTS)
    return {i: m for (a, i), m in current(marks).items() if a == annotator}


async def test_mark_keys_move_on_and_header_matches_the_statistics(tmp_path):
    s = make_session(tmp_path)
    app = app_for(s)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, AssessScreen) and screen.model.pos == 0
        for key in "hfhuf":
            await pilot.press(key)
        assert screen.model.pos == 5
        state = my_state(s)
        assert [state[f"q{i}"].label for i in range(5)] == ["hallucinated", "faithful", "hallucinated", "unsure",
                                                            "faithful"]
        header = str(screen.query_one("#stats").render())
        lo, hi = wilson_interval(2, 4)
        assert "assessed 5/12" in header and "hallucinated 2" in header
        # ±10 points would need more items than the session has: the header says so instead of "≈ N more"
        assert f"{100 * lo:.1f}–{100 * hi:.1f}%" in header and "assess the 7 left" in header


async def test_categories_severity_note_and_undo(tmp_path):
    s = make_session(tmp_path)
    async with app_for(s).run_test(size=(100, 30)) as pilot:
        screen = pilot.app.screen
        await pilot.press("2", "1", "m", "h")  # draft categories + severity, then the label
        m = my_state(s)["q0"]
        assert m.label == "hallucinated" and m.categories == ["contradiction", "fabrication"] and m.severity == "major"
        await pilot.press("k", "2", "m")  # back to q0: drop contradiction, severity major -> minor
        m = my_state(s)["q0"]
        assert m.categories == ["fabrication"] and m.severity == "minor"
        await pilot.press("n")
        await pilot.press(*"wrong dose")
        await pilot.press("enter")
        assert my_state(s)["q0"].note == "wrong dose"
        await pilot.press("z")  # undo the note
        assert my_state(s)["q0"].note == ""
        await pilot.press("backspace", "backspace", "backspace")  # severity, categories, then the label itself
        assert "q0" not in my_state(s)
        assert screen.model.pos == 0
        lines = (s / ASSESSMENTS).read_text().splitlines()
        assert len(lines) == 8  # append-only: 4 marks and 4 undos, each a line


async def test_navigation_next_unassessed_search_goto_and_filters(tmp_path):
    s = make_session(tmp_path)
    async with app_for(s).run_test(size=(100, 30)) as pilot:
        m = pilot.app.screen.model
        await pilot.press("h", "h", "j", "j", "f")  # q0 q1 marked, skip q2 q3, q4 marked
        assert m.pos == 5
        await pilot.press("k", "k", "k")
        assert m.pos == 2
        await pilot.press("J")  # next unassessed after q2 is q3
        assert m.item["id"] == "q3"
        await pilot.press("slash", *"Drug7 ", "enter")
        assert m.item["id"] == "q7"
        await pilot.press("g", "1", "1", "enter")
        assert m.pos == 10
        await pilot.press("F")  # unassessed
        assert m.filter == "unassessed" and all(m.items[i]["id"] not in ("q0", "q1", "q4") for i in m.visible())
        await pilot.press("F")  # hallucinated
        assert [m.items[i]["id"] for i in m.visible()] == ["q0", "q1"] and m.item["id"] in ("q0", "q1")
        await pilot.press("F", "F")  # unsure, then flagged by the pre-screen
        assert m.filter == "flagged" and [m.items[i]["id"] for i in m.visible()] == ["q0", "q3", "q6", "q9"]
        await pilot.press("down")
        assert m.item["id"] in ("q3", "q6", "q9")


async def test_reopening_resumes_at_the_first_unassessed_item_and_blind_hides_others(tmp_path):
    s = make_session(tmp_path)
    with AssessmentLog(s, "bob") as log:
        log.mark("q0", "hallucinated")
    with AssessmentLog(s, "alice") as log:
        for i in range(4):
            log.mark(f"q{i}", "faithful")
    async with app_for(s).run_test(size=(100, 30)) as pilot:
        screen = pilot.app.screen
        assert screen.model.item["id"] == "q4"
        await pilot.press("g", "1", "enter")
        assert "bob" in str(screen.query_one("#marks").render())
    async with app_for(s, blind=True).run_test(size=(100, 30)) as pilot:
        await pilot.press("g", "1", "enter")
        assert "bob" not in str(pilot.app.screen.query_one("#marks").render())


async def test_second_console_for_the_same_annotator_is_read_only(tmp_path):
    s = make_session(tmp_path)
    with AssessmentLog(s, "alice"):
        async with app_for(s).run_test(size=(100, 30)) as pilot:
            screen = pilot.app.screen
            assert screen.model.readonly_reason and "alice" in screen.model.readonly_reason
            assert "read-only" in str(screen.query_one("#stats").render())
            await pilot.press("h")
            assert my_state(s) == {}  # nothing written


async def test_corrupt_assessment_line_is_reported_and_skipped(tmp_path):
    s = make_session(tmp_path)
    with AssessmentLog(s, "alice") as log:
        log.mark("q0", "faithful")
    with open(s / ASSESSMENTS, "a") as f:
        f.write("garbage\n")
    async with app_for(s).run_test(size=(100, 30)) as pilot:
        screen = pilot.app.screen
        assert [p.line for p in screen.model.problems] == [2]
        assert screen.model.item["id"] == "q1"
        await pilot.press("h")
        assert my_state(s)["q1"].label == "hallucinated"


async def test_report_screen_jumps_to_an_item_and_exports(tmp_path):
    s = make_session(tmp_path)
    with AssessmentLog(s, "bob") as log:
        log.mark("q5", "hallucinated")
    with AssessmentLog(s, "alice") as log:
        log.mark("q5", "faithful")
    async with app_for(s).run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        assert isinstance(pilot.app.screen, ReportScreen)
        await pilot.press("e")
        assert (s / "report.md").exists() and (s / "assessments.csv").exists()
        await pilot.press("enter")  # the disputed item
        assert isinstance(pilot.app.screen, AssessScreen) and pilot.app.screen.model.item["id"] == "q5"


def test_killed_mid_session_loses_no_mark_and_reopens_after_the_last(tmp_path):
    """A real process in tmux makes K marks and is SIGKILLed: K marks are on disk."""
    if not shutil.which("tmux"):
        pytest.fail("tmux is needed for this test (apt-get install tmux)")
    s = make_session(tmp_path)
    name = f"rounds-crash-{os.getpid()}"
    env_user = "USER=carol"
    cmd = f"cd {ROOT} && {env_user} {os.sys.executable} -m console.cli --sessions {s.parent} assess {s.name}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd], check=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout
            if "item 1/12" in out:
                break
            time.sleep(0.2)
        k = 7
        for key in "hfhfhff"[:k]:
            subprocess.run(["tmux", "send-keys", "-t", name, key], check=True)
            time.sleep(0.25)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(my_state(s, "carol")) < k:
            time.sleep(0.1)
        pid = int(subprocess.run(["tmux", "display-message", "-p", "-t", name, "#{pane_pid}"], capture_output=True,
                                 text=True).stdout)
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        for p in [pid, *map(int, children)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    state = my_state(s, "carol")
    assert sorted(state) == [f"q{i}" for i in range(k)]
    from console.assess_state import AssessModel

    model = AssessModel(s, "carol")
    try:
        assert model.item["id"] == f"q{k}"
    finally:
        model.close()


# --------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("size", [(100, 30), (80, 24)])
def test_assess_snapshot(snap_compare, size):
    root = Path(tempfile.gettempdir()) / "rounds-snapshots" / f"assess-{size[0]}"
    shutil.rmtree(root, ignore_errors=True)
    s = make_session(root, name="snap")
    with AssessmentLog(s, "alice") as log:
        log.mark("q0", "hallucinated", ["contradiction"], "major", "dose is wrong")
    meta = json.loads((s / "session.json").read_text())
    assert meta["kind"] == "eval"
    app = RoundsApp(root, assess=(s, "alice", False))

    async def settle(pilot):
        await pilot.press("g", "1", "enter")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=size, run_before=settle)


async def test_compare_screen_lists_changed_items_and_opens_them_side_by_side(tmp_path):
    from console.screens.compare import CompareScreen, SideBySide

    a, b = _two_assessed(tmp_path)
    app = RoundsApp(tmp_path, compare=(a, b, None))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        summary = str(screen.query_one("#summary").render())
        assert "exact McNemar p = 0.25" in summary and "in A only 3" in summary
        options = screen.query_one("#changed")
        assert options.option_count == 3
        await pilot.press("enter")
        assert isinstance(app.screen, SideBySide)
        await pilot.press("escape")
        assert isinstance(app.screen, CompareScreen)


def _fixed_id(path: Path, new_id: str) -> Path:
    """Give a session a fixed id (its folder name), so a screen that shows it is the same every run."""
    target = path.with_name(new_id)
    path.rename(target)
    meta = json.loads((target / "session.json").read_text())
    meta["id"] = new_id
    (target / "session.json").write_text(json.dumps(meta))
    return target


def _two_assessed(root: Path) -> tuple[Path, Path]:
    a = make_session(root, name="before")
    b = make_session(root, name="after")
    with AssessmentLog(a, "alice") as log:
        for i in range(6):
            log.mark(f"q{i}", "hallucinated" if i < 4 else "faithful")
    with AssessmentLog(b, "alice") as log:
        for i in range(6):
            log.mark(f"q{i}", "hallucinated" if i == 0 else "faithful")
    return a, b


async def test_home_marks_two_sessions_and_compares_them(tmp_path):
    from console.screens.compare import CompareScreen
    from console.screens.home import HomeScreen

    a, b = _two_assessed(tmp_path)
    app = RoundsApp(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        home = app.screen
        end = time.monotonic() + 120
        while len(home.infos) < 2 and time.monotonic() < end:
            await pilot.pause(0.05)
        await pilot.press("C")  # nothing marked yet: a warning, no screen
        assert isinstance(app.screen, HomeScreen)
        await pilot.press("space", "down", "space", "C")
        assert isinstance(app.screen, CompareScreen)
        assert {app.screen.a.name, app.screen.b.name} == {a.name, b.name}
        await pilot.press("escape")
        assert isinstance(app.screen, HomeScreen)


@pytest.mark.parametrize("size", [(100, 30), (80, 24)])
@pytest.mark.parametrize("which", ["report", "compare"])
def test_report_and_compare_snapshots(snap_compare, size, which):
    root = Path(tempfile.gettempdir()) / "rounds-snapshots" / f"{which}-{size[0]}"
    shutil.rmtree(root, ignore_errors=True)
    a, b = (_fixed_id(p, f"20261128-010000-eval-{n}") for p, n in zip(_two_assessed(root), ("before", "after"),
                                                                       strict=True))
    if which == "report":
        app = RoundsApp(root, assess=(a, "alice", False))

        async def settle(pilot):
            await pilot.press("r")
            await pilot.pause(0.1)
    else:
        app = RoundsApp(root, compare=(a, b, None))

        async def settle(pilot):
            await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=size, run_before=settle)


async def test_judges_verdicts_beside_the_answer_most_doubtful_first_and_filter_by_verdict(tmp_path):
    from console.assess_state import FILTERS
    from engine.report import auto_assess

    s = make_session(tmp_path)  # q0, q3, q6, q9 give a wrong dose
    auto_assess(s, "contains")
    with AssessmentLog(s, "auto:consistency") as log:  # scores: q5 the most doubtful, then q2, then q7
        for i in range(12):
            score = {5: 0.5, 2: 0.42, 7: 0.2}.get(i, 0.0 if i % 3 else 1.0)
            log.mark(f"q{i}", "hallucinated" if score >= 0.5 else "faithful", note=f"reason {i}", score=score)
    async with app_for(s).run_test(size=(100, 30)) as pilot:
        screen, m = pilot.app.screen, pilot.app.screen.model
        await pilot.press("g", "1", "enter")
        marks = str(screen.query_one("#marks").render())
        assert "judge contains: hallucinated" in marks and "judge consistency: hallucinated 1.00 · reason 0" in marks
        await pilot.press("o")
        assert m.order == "most doubtful first"
        order = [m.items[i]["id"] for i in m.visible()]
        # judges disagree on q5 (contains: faithful, consistency: hallucinated at 0.5) -> first
        assert order[:3] == ["q5", "q2", "q7"] and m.item["id"] == "q5"
        assert "most doubtful first" in str(screen.query_one("#stats").render())
        await pilot.press("j")
        assert m.item["id"] == "q2"
        await pilot.press("h")  # marking keeps the order: on to the next most doubtful
        assert m.item["id"] == "q7"
        while m.filter != "judge: hallucinated":
            await pilot.press("F")
        assert sorted(m.items[i]["id"] for i in m.visible()) == ["q0", "q3", "q5", "q6", "q9"]
        await pilot.press("F")
        assert m.filter == FILTERS[FILTERS.index("judge: hallucinated") + 1] == "judge: faithful"
        while m.filter != "judges disagree":
            await pilot.press("F")
        assert [m.items[i]["id"] for i in m.visible()] == ["q5"]
    async with app_for(s, annotator="bob", blind=True).run_test(size=(100, 30)) as pilot:
        assert "judge" not in str(pilot.app.screen.query_one("#marks").render())  # blind hides judges too


async def test_the_key_list_names_keys_as_they_are_pressed_and_scrolls_at_80_by_24(tmp_path):
    from textual.containers import VerticalScroll

    from console.screens.dialogs import KeyHelp

    s = make_session(tmp_path)
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        assert isinstance(app.screen, KeyHelp)
        text = str(app.screen.query_one("Static").render())
        assert "question_mark" not in text and "escape" not in text and "slash" not in text
        assert " ? " in text or "? " in text
        box = app.screen.query_one(VerticalScroll)
        assert box.max_scroll_y > 0  # the Assess list is longer than 24 rows: it scrolls
        for _ in range(40):
            await pilot.press("down")
        await pilot.pause(0.2)
        assert box.scroll_y == box.max_scroll_y  # its last line ("esc closes this") can be reached
        await pilot.press("escape")
        assert isinstance(app.screen, AssessScreen)


async def test_the_active_filter_is_on_screen_at_80x24(tmp_path):
    """The filter label was appended to the long stats line and fell off an 80-column screen."""
    s = make_session(tmp_path, name="a-long-session-name-for-small-terminals")
    async with app_for(s).run_test(size=(80, 24)) as pilot:
        await pilot.press("h", "h", "f")  # a long stats line: rate, interval, "assess the N left"
        await pilot.press("F", "F")  # hallucinated
        await pilot.pause()
        from test_console import screen_text

        text = screen_text(pilot.app.export_screenshot())
        assert any("filter: hallucinated (2)" in line and len(line) <= 80 for line in text.splitlines()), text
