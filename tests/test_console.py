"""Console: Home and Monitor driven with Textual's Pilot, against session folders the tests write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from console.app import RoundsApp
from console.screens.dialogs import Confirm
from console.screens.home import HomeScreen
from console.screens.monitor import MonitorScreen
from console.state import MonitorState, Series
from engine.session import SESSION_JSON, SessionWriter, liveness, write_json_atomic

T0 = 1_795_800_000.0  # a fixed "now" for deterministic screens
GIB = 2**30


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    time.tzset()


class FakeProbe:
    def sample(self):
        return {"gpus": [], "host": {"cpu_percent": 12.5, "ram_used": 3 * GIB, "ram_total": 24 * GIB, "cpus": 2},
                "process": {}}


def fixed_session(root: Path, name: str, *, stage="dpo", status="finished", gpus=True, steps=60, pid=None,
                  created="2026-11-28T01:00:00+00:00") -> Path:
    w = SessionWriter.create(root, "train", name=name, stage=stage, config={"stage": stage})
    w.update(created=created, started=created, ended=None if status == "running" else "2026-11-28T01:42:10+00:00",
             status=status, pid=pid or os.getpid(), plan={"name": "qlora", "precompute_ref": True,
                                                           "predicted_peak_bytes": int(7.6 * GIB)})
    lines = [{"time": T0 - 3000, "type": "event", "kind": "plan", "plan": "qlora", "device": "cuda" if gpus else "cpu",
              "predicted_peak_bytes": int(7.6 * GIB)}]
    for s in range(1, steps + 1):
        rec = {"time": T0 - 3000 + s * 40, "type": "metrics", "step": s, "max_steps": 100, "loss": 0.69 - s * 0.004,
               "seconds_per_step": 40.0, "eta_seconds": (100 - s) * 40.0, "tokens_per_second": 1500.0 + s}
        if stage == "dpo":
            rec.update({"rewards/margins": s * 0.02, "rewards/accuracies": min(1.0, 0.5 + s * 0.01)})
        lines.append(rec)
        if s % 20 == 0:
            lines.append({"time": rec["time"], "type": "event", "kind": "checkpoint", "step": s, "seconds": 3.2,
                          "reason": "every --save-steps"})
        gpu = [{"index": 0, "name": "RTX 4070", "mem_used": int((7.0 + s * 0.005) * GIB), "mem_total": 12 * GIB,
                "util": 90 + s % 7, "temp_c": 71, "power_w": 180.0, "power_limit_w": 200.0}] if gpus else []
        lines.append({"time": rec["time"], "type": "system", "gpus": gpu,
                      "host": {"cpu_percent": 25.0, "ram_used": 6 * GIB, "ram_total": 32 * GIB, "cpus": 8},
                      "process": {"rss": 3 * GIB, "rss_children": 0, "cpu_percent": 100.0, "threads": 12}})
    if status == "finished":
        lines.append({"time": T0 - 3000 + steps * 40 + 1, "type": "event", "kind": "finished", "step": steps})
        lines.append({"time": T0 - 3000 + steps * 40 + 1, "type": "status", "status": "finished"})
    (w.path / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return w.path


async def wait_loaded(pilot, screen: MonitorScreen, timeout: float = 10):
    end = time.monotonic() + timeout
    while not screen.loaded and time.monotonic() < end:
        await pilot.pause(0.05)
    await pilot.pause(0.1)


def text_of(screen, selector: str) -> str:
    w = screen.query_one(selector)
    return str(w.render())


# --------------------------------------------------------------------------- state (no UI)


def test_series_replaces_redone_steps_and_downsamples():
    s = Series()
    for i in range(1, 11):
        s.add(i, float(i))
    s.add(8, 80.0)  # resumed from checkpoint 7: step 8 done again
    assert list(s.steps) == [1, 2, 3, 4, 5, 6, 7, 8] and s.last == 80.0
    big = Series()
    for i in range(100_000):
        big.add(i, float(i % 10))
    assert len(big.downsample(60)) == 60


def test_liveness():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    host = socket.gethostname()
    assert liveness({"status": "running", "pid": os.getpid(), "host": host}, time.time())[0] == "running"
    assert liveness({"status": "running", "pid": os.getpid(), "host": host}, time.time() - 600)[0] == "stalled"
    status, detail = liveness({"status": "running", "pid": int(dead.stdout), "host": host}, T0)
    assert status == "lost" and "last event" in detail
    assert liveness({"status": "finished"}, None) == ("finished", "")


def test_state_reads_everything_in_order():
    st = MonitorState()
    st.feed([{"type": "metrics", "step": 1, "max_steps": 4, "loss": 1.0, "eta_seconds": 30},
             {"type": "event", "kind": "oom_recovered", "step": 1, "micro_batch": [4, 2], "grad_accum": [1, 2]},
             {"type": "corrupt", "line": 3}, {"type": "status", "status": "stopped"}])
    assert st.step == 1 and st.fraction == 0.25 and st.status == "stopped" and st.corrupt_lines == 1
    assert any("micro-batch 4→2" in line[2] for line in st.lines)


# --------------------------------------------------------------------------- Monitor


async def test_monitor_follows_a_live_writer(tmp_path):
    w = SessionWriter.create(tmp_path, "train", name="live", stage="sft")
    w.update(plan={"name": "lora"})
    w.set_status("running")
    stop = threading.Event()

    def write():
        step = 0
        while not stop.is_set() and step < 400:
            step += 1
            w.event("metrics", step=step, max_steps=400, loss=2.0 / step, seconds_per_step=0.01,
                    eta_seconds=(400 - step) * 0.01, tokens_per_second=1000.0)
            if step % 50 == 0:
                w.event("system", gpus=[], host={"cpu_percent": 50.0, "ram_used": GIB, "ram_total": 8 * GIB},
                        process={"rss": GIB})
            time.sleep(0.005)

    app = RoundsApp(tmp_path, w.path, probe=FakeProbe())
    t = threading.Thread(target=write)
    async with app.run_test(size=(100, 30)) as pilot:
        t.start()
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        seen = set()
        for _ in range(40):
            await pilot.pause(0.1)
            if screen.state.step:
                seen.add(screen.state.step)
        stop.set()
        t.join()
        await pilot.pause(0.8)
        assert len(seen) >= 3  # the step moved while we watched
        progress = text_of(screen, "#progress")
        assert f"step {screen.state.step}/400" in progress and "ETA" in progress
        assert "GPU  N/A" in text_of(screen, "#memory")
        assert screen.state.series["loss"].last == pytest.approx(2.0 / screen.state.step)


async def test_monitor_survives_a_half_written_line_and_shows_stopped(tmp_path):
    path = fixed_session(tmp_path, "half", status="running", gpus=False, steps=10)
    with open(path / "events.jsonl", "ab") as f:
        f.write(b'{"time": 1, "type": "metrics", "step": 11, "max_')
    app = RoundsApp(tmp_path, path, probe=FakeProbe(), clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await wait_loaded(pilot, screen)
        assert screen.state.step == 10
        with open(path / "events.jsonl", "ab") as f:
            f.write(b'steps": 100, "loss": 0.5}\n{"time": 2, "type": "status", "status": "stopped"}\n')
        meta = json.loads((path / SESSION_JSON).read_text())
        meta["status"] = "stopped"
        write_json_atomic(path / SESSION_JSON, meta)
        await pilot.pause(1.2)
        assert screen.state.step == 11
        assert "stopped" in text_of(screen, "#title")


async def test_monitor_shows_lost_for_a_dead_process(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = fixed_session(tmp_path, "ghost", status="running", gpus=False, pid=int(dead.stdout), steps=5)
    app = RoundsApp(tmp_path, path, probe=FakeProbe(), clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_loaded(pilot, app.screen)
        assert "lost" in text_of(app.screen, "#title") and "last event" in text_of(app.screen, "#title")


async def test_checkpoint_key_writes_a_request_and_stop_asks_then_signals(tmp_path):
    flag = tmp_path / "got-term"
    dummy = subprocess.Popen([sys.executable, "-c",
                              "import signal, sys, time\n"
                              f"signal.signal(signal.SIGTERM, lambda *a: (open({str(flag)!r}, 'w').write('x'), "
                              "sys.exit(0)))\n"
                              "print('ready', flush=True)\n"
                              "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    assert dummy.stdout.readline().strip() == "ready"
    try:
        path = fixed_session(tmp_path, "keys", status="running", gpus=False, pid=dummy.pid, steps=5)
        app = RoundsApp(tmp_path, path, probe=FakeProbe(), clock=lambda: T0 - 3000 + 5 * 40 + 5)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_loaded(pilot, app.screen)
            await pilot.press("c")
            assert (path / "requests" / "checkpoint").exists()
            await pilot.press("s")
            assert isinstance(app.screen, Confirm)
            await pilot.press("n")  # changed my mind: nothing happens
            await pilot.pause(0.2)
            assert not flag.exists() and not (path / "requests" / "stop").exists()
            await pilot.press("s")
            await pilot.press("y")
            dummy.wait(timeout=120)
            assert flag.exists() and (path / "requests" / "stop").exists()
    finally:
        if dummy.poll() is None:
            dummy.kill()


async def test_chart_keys_cycle(tmp_path):
    path = fixed_session(tmp_path, "charts", gpus=True)
    app = RoundsApp(tmp_path, path, probe=FakeProbe(), clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_loaded(pilot, app.screen)
        assert "loss" in text_of(app.screen, "#chart0")
        await pilot.press("2")
        assert "reward margin" in text_of(app.screen, "#chart0")
        await pilot.press("tab")
        assert "tokens/s" in text_of(app.screen, "#chart0")
        memory = text_of(app.screen, "#memory")
        assert "GPU0" in memory and "12.0 GiB" in memory and "predicted peak 7.6 GiB" in memory


async def test_home_lists_newest_first_and_opens_the_monitor(tmp_path):
    fixed_session(tmp_path, "older", created="2026-11-27T20:00:00+00:00")
    fixed_session(tmp_path, "newer", created="2026-11-28T01:00:00+00:00", stage="sft", gpus=False)
    app = RoundsApp(tmp_path, probe=FakeProbe(), clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        home = app.screen
        end = time.monotonic() + 120
        while not home.infos and time.monotonic() < end:
            await pilot.pause(0.05)
        assert isinstance(home, HomeScreen)
        assert [i.name for i in home.infos] == ["newer", "older"]
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, MonitorScreen) and app.screen.session.name.endswith("newer")
        await pilot.press("escape")
        assert isinstance(app.screen, HomeScreen)
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        assert "keys" in str(app.screen.query_one("Static").render())


def test_console_does_not_import_torch_when_it_runs(tmp_path):
    fixed_session(tmp_path, "x")
    code = (
        "import sys, asyncio\n"
        "from console.app import RoundsApp\n"
        f"app = RoundsApp({str(tmp_path)!r})\n"
        "async def main():\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        await pilot.pause(0.5)\n"
        "        await pilot.press('enter')\n"
        "        await pilot.pause(0.5)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- snapshots


def _snapshot_app(name: str, gpus: bool, stage: str, screen: str) -> RoundsApp:
    # a fixed folder: the Home screen shows the sessions root, which must not change between runs
    root = Path(tempfile.gettempdir()) / "rounds-snapshots" / name
    shutil.rmtree(root, ignore_errors=True)
    fixed_session(root, "sft-demo", stage="sft", gpus=False, created="2026-11-27T22:00:00+00:00")
    path = fixed_session(root, f"{stage}-run", stage=stage, gpus=gpus)
    return RoundsApp(root, path if screen == "monitor" else None, probe=FakeProbe(), clock=lambda: T0)


SNAPSHOTS = Path(__file__).parent / "text_snapshots"  # Home as text, apart from the SVG plugin's folder


def screen_text(svg: str) -> str:
    """The characters of an exported screen, line by line (no colours)."""
    import html
    import re

    rows = re.findall(r'<text class="[^"]*" x="([0-9.]+)" y="([0-9.]+)"[^>]*>(.*?)</text>', svg)
    lines: dict[float, list[tuple[float, str]]] = {}
    for x, y, t in rows:
        lines.setdefault(float(y), []).append((float(x), html.unescape(t).replace("\xa0", " ")))
    return "\n".join("".join(t for _, t in sorted(v)).rstrip() for _, v in sorted(lines.items()))


@pytest.mark.parametrize("size", [(100, 30), (80, 24)])
@pytest.mark.parametrize("kind", ["dpo-gpu", "sft-cpu"])
def test_home_text_snapshots(size, kind):
    """Home as text: Textual's SVG of a DataTable header sometimes differs in a background rectangle
    from run to run, so Home is compared by what it shows; the Monitor by its full SVG (below)."""
    import asyncio

    stage, gpus = ("dpo", True) if kind == "dpo-gpu" else ("sft", False)
    app = _snapshot_app(f"home-{kind}-{size[0]}x{size[1]}", gpus, stage, "home")

    async def shot():
        async with app.run_test(size=size) as pilot:
            home = app.screen
            end = time.monotonic() + 120
            while not home.shown and time.monotonic() < end:
                await pilot.pause(0.05)
            # the table lays its rows out over more than one refresh: wait until both rows are on the
            # screen (a busy machine can take a while), never a fixed pause
            text = screen_text(app.export_screenshot())
            while not ("sft-demo" in text and f"{stage}-run" in text) and time.monotonic() < end:
                await pilot.pause(0.05)
                text = screen_text(app.export_screenshot())
            await pilot.pause(0.1)
            return screen_text(app.export_screenshot())

    text = asyncio.run(shot())
    expected = SNAPSHOTS / f"home-{kind}-{size[0]}x{size[1]}.txt"
    if os.environ.get("ROUNDS_UPDATE_SNAPSHOTS") or not expected.exists():
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(text + "\n")
        if not os.environ.get("ROUNDS_UPDATE_SNAPSHOTS"):
            pytest.fail(f"wrote a new snapshot {expected}; check it and commit it")
    assert text + "\n" == expected.read_text()


@pytest.mark.parametrize("size", [(100, 30), (80, 24)])
@pytest.mark.parametrize("kind", ["dpo-gpu", "sft-cpu"])
def test_monitor_snapshots(snap_compare, size, kind):
    stage, gpus = ("dpo", True) if kind == "dpo-gpu" else ("sft", False)
    app = _snapshot_app(f"monitor-{kind}-{size[0]}x{size[1]}", gpus, stage, "monitor")

    async def settle(pilot):
        await wait_loaded(pilot, pilot.app.screen)

    assert snap_compare(app, terminal_size=size, run_before=settle)


def test_home_fits_80_columns_and_tells_runs_of_one_name_apart(tmp_path):
    """At 80x24 every column is on screen (time and halluc. were cut off) and two runs of one name
    are numbered, the number kept when the name itself has to be cut."""
    from console.screens.home import COLUMNS, PADDING, home_rows
    from engine.session import list_sessions

    fixed_session(tmp_path, "stage-b-dpo-medical-specialist", created="2026-11-27T22:00:00+00:00")
    fixed_session(tmp_path, "stage-b-dpo-medical-specialist", created="2026-11-28T01:00:00+00:00")
    fixed_session(tmp_path, "sft", stage="sft")
    infos = list_sessions(tmp_path)
    rates = {i.id: "43% (32–55)" for i in infos}
    wide = dict(home_rows(infos, T0, set(), rates))
    assert sorted(c[0] for c in wide.values()) == ["sft", "stage-b-dpo-medical-specialist #1",
                                                   "stage-b-dpo-medical-specialist #2"]
    newest = max((i for i in infos if i.name.startswith("stage")), key=lambda i: i.created)
    assert wide[newest.id][0].endswith(" #2") and wide[newest.id][3] == "60% 60/100"
    for width in (80, 100):
        rows = home_rows(infos, T0, set(), rates, width=width)
        used = sum(max(len(label), *(len(r[1][k]) for r in rows)) + PADDING for k, label in enumerate(COLUMNS)) + 1
        assert used <= width, (width, used, rows)
        assert all(r[1][6] == "43% (32–55)" and r[1][5] for r in rows)  # time and halluc. kept whole
        numbered = sorted(r[1][0][-3:] for r in rows if "#" in r[1][0])
        assert numbered == [" #1", " #2"]


def test_the_monitor_footer_fits_80_columns():
    """The footer was cut to `q q` at 80 columns: its words are short, the sentences are in `?`."""
    import asyncio

    app = _snapshot_app("monitor-footer-80", True, "dpo", "monitor")

    async def go():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot, app.screen, timeout=120)
            return screen_text(app.export_screenshot()).splitlines()[-1]

    footer = asyncio.run(go())
    for words in ("c checkpoint", "s stop", "esc sessions", "? keys", "q quit"):
        assert words in footer, footer


def test_the_monitor_shows_a_pass_before_the_first_step_with_its_progress():
    """DPO's reference log-probs are computed before the first step: the Monitor said "no steps yet"."""
    from console.screens.monitor import header_text

    st = MonitorState(meta={"kind": "train", "stage": "dpo", "name": "b", "status": "running", "pid": os.getpid(),
                            "host": __import__("socket").gethostname()})
    st.feed([{"time": T0 - 5, "type": "progress", "phase": "reference log-probs: train dataset", "prestep": True,
              "step": 150,
              "max_steps": 600, "unit": "batches", "eta_seconds": 90.0}])
    _, prog, _ = header_text(st, "b", T0, 100)
    assert "reference log-probs: train dataset 150/600 batches" in prog.plain and "25%" in prog.plain
    assert "ETA 1m30s" in prog.plain and "no steps yet" not in prog.plain
    assert st.step is None and any("reference log-probs" in line[2] for line in st.lines)
    st.feed([{"time": T0, "type": "metrics", "step": 1, "max_steps": 10, "loss": 0.69}])
    _, prog, _ = header_text(st, "b", T0, 100)
    assert "step 1/10" in prog.plain and "reference" not in prog.plain  # the phase is over


def test_home_on_an_empty_sessions_root_says_so_and_stays_up(tmp_path):
    """Fitting the rows to the width once took Home down when there were no rows at all."""
    import asyncio

    from console.screens.home import home_rows

    assert home_rows([], T0, set(), {}, width=80) == []
    app = RoundsApp(tmp_path / "empty", probe=FakeProbe(), clock=lambda: T0)

    async def go():
        async with app.run_test(size=(80, 24)) as pilot:
            end = time.monotonic() + 120
            while "no sessions in" not in screen_text(app.export_screenshot()) and time.monotonic() < end:
                await pilot.pause(0.1)
            return screen_text(app.export_screenshot()), app.is_running

    text, running = asyncio.run(go())
    assert "no sessions in" in text and running


def test_a_pairs_runs_progress_is_its_progress_in_home(tmp_path):
    """A pairs run names the phase of each progress record (reading, pairing): that is its progress,
    unlike the pass before a training run's first step."""
    from engine.session import list_sessions

    w = SessionWriter.create(tmp_path, "pairs", name="p", stage="from-columns")
    w.set_status("running")
    w.event("progress", phase="reading", step=30, max_steps=120, unit="MiB")
    w.close()
    (info,) = list_sessions(tmp_path)
    assert info.progress == 0.25
    st = MonitorState(meta=dict(info.meta))
    st.feed([{"time": T0, "type": "progress", "phase": "reading", "step": 30, "max_steps": 120, "unit": "MiB"}])
    assert st.step == 30 and st.phase is None
