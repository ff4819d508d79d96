"""Console cost: opening a big session, listing many, and watching a live one.

1. Sessions of N events (``--events 100000,1000000``: a long night), each with the history.json a
   run writes beside its events: time from starting the app to the first complete Monitor frame
   (the whole history in the state, charts drawn), next to the first frame of a bare Textual app of
   the same layout with no data, started the same way (the floor this machine sets), and next to
   merely parsing the file with json.loads line by line. Target (issue #19): <= 1.5x the bare app.
   Also, without history.json (a session from an older rounds, or one whose history was deleted):
   the first frame, drawn from the file's end, and the time until the history read in the
   background is complete.
2. Home with S sessions of E events each (``--home-sessions 500 --home-events 100000``; the
   sessions share one events file by hard links, so they cost no disk): time to Home's first
   frame with every row drawn. Target: <= 2x the bare app.
3. CPU seconds the console process uses per minute while a writer appends 10 events/s.
   Target: <= 1.8 s/min (3 % of a core).
4. This machine's baselines: ``import textual.app`` and json.loads, so machines can be compared;
   and whether torch was imported by the console (it must not be).

    python bench/console_perf.py [--events 100000] [--home-sessions 100] [--home-events 20000] [--watch-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPEN_AND_MEASURE = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from console.app import RoundsApp
from console.screens.monitor import MonitorScreen
root, session, watch = sys.argv[1], sys.argv[2], float(sys.argv[3])
app = RoundsApp(root, session)
result = {}
async def main():
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        while not (isinstance(screen, MonitorScreen) and screen.state.step is not None):
            await pilot.pause(0.01)
            screen = app.screen
        await pilot.pause(0)  # let the frame render
        result["newest_frame"] = time.perf_counter() - t0  # the newest step drawn
        while not screen.loaded:
            await pilot.pause(0.01)
        await pilot.pause(0)
        result["first_frame"] = time.perf_counter() - t0  # the whole history in
        result["events"] = screen.state.events_seen
        if watch:
            import psutil
            p = psutil.Process()
            c0 = sum(p.cpu_times()[:2])
            print("WATCHING", flush=True)
            await pilot.pause(watch)
            result["cpu_seconds"] = sum(p.cpu_times()[:2]) - c0
            result["events_after"] = screen.state.events_seen
asyncio.run(main())
result["torch_imported"] = "torch" in sys.modules
print("RESULT " + json.dumps(result), flush=True)
"""


BARE_APP = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from textual.app import App
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Static
class Bare(App):  # the Monitor's layout (title, progress, two panels, charts, events, footer), no data
    def compose(self):
        yield Static("title"); yield Static("progress")
        with Horizontal(): yield Static("memory"); yield Static("system")
        with Horizontal(): yield Static("chart"); yield Static("chart")
        yield DataTable(); yield Footer()
app = Bare()
async def main():
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0)
        print("RESULT " + json.dumps({"first_frame": time.perf_counter() - t0}), flush=True)
asyncio.run(main())
"""

OPEN_HOME = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from console.app import RoundsApp
root, n = sys.argv[1], int(sys.argv[2])
app = RoundsApp(root)
async def main():
    async with app.run_test(size=(100, 30)) as pilot:
        home = app.screen
        while not getattr(home, "shown", False):
            await pilot.pause(0.01)
            home = app.screen
        await pilot.pause(0)
        first = time.perf_counter() - t0  # the newest screenful drawn, with the number of sessions
        assert f"{n} sessions" in str(home.query_one("#host").render()), "the first frame must count them all"
        while not (home.complete and len(home.infos) >= n):
            await pilot.pause(0.01)
        print("RESULT " + json.dumps({"first_frame": first, "all": time.perf_counter() - t0}), flush=True)
asyncio.run(main())
"""

TEXTUAL_IMPORT = "import time; t = time.perf_counter(); import textual.app; print(time.perf_counter() - t)"


def _run(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"a measurement failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def write_home(root: Path, sessions: int, events: int) -> None:
    """``sessions`` finished sessions whose events.jsonl (and history.json) are one shared file of
    ``events`` events (hard links)."""
    import os

    from engine.session import SessionWriter

    first = write_session(root / "first", events)
    for i in range(sessions):
        w = SessionWriter.create(root / "home", "train", name=f"run-{i:04d}", stage="dpo")
        w.update(status="finished", started=w.meta["created"], ended=w.meta["created"])
        for name in ("events.jsonl", "history.json"):
            os.link(first / name, w.path / name)


def write_session(root: Path, n: int) -> Path:
    from engine import stages
    from engine.session import SessionWriter

    w = SessionWriter.create(root, "train", name="big", stage="dpo")
    # what `rounds train` records: the plan and the stage's charts (so the console imports no stage code)
    w.update(plan={"name": "qlora", "predicted_peak_bytes": 7 * 2**30}, stage_info=stages.get("dpo").describe())
    w.set_status("running")
    t = time.time() - n
    with open(w.path / "events.jsonl", "a") as f:
        for start in range(0, n, 10_000):  # written in slices: a million events never sit in memory
            lines = []
            for i in range(start, min(n, start + 10_000)):
                if i % 10 == 9:
                    lines.append({"time": t + i, "type": "system", "gpus": [],
                                  "host": {"cpu_percent": 30.0, "ram_used": 2**33, "ram_total": 2**35},
                                  "process": {"rss": 2**32}})
                else:
                    lines.append({"time": t + i, "type": "metrics", "step": i, "max_steps": max(200_000, n),
                                  "loss": 1 / (1 + i), "rewards/margins": i * 1e-4, "rewards/accuracies": 0.7,
                                  "tokens_per_second": 1500.0, "learning_rate": 5e-6, "grad_norm": 1.0,
                                  "seconds_per_step": 1.0, "eta_seconds": 1e5})
            f.write("".join(json.dumps(x) + "\n" for x in lines))
    save_history(w.path)
    return w.path


def save_history(session: Path) -> None:
    """history.json as the run leaves it (its writer saves it as it goes; the same digest)."""
    from engine.session.history import History

    hist = History.load(session)
    hist.catch_up()
    hist.save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", default="100000,1000000", help="session sizes, comma-separated")
    ap.add_argument("--watch-seconds", type=float, default=30.0)
    ap.add_argument("--home-sessions", type=int, default=500, help="sessions Home lists (the target: 500)")
    ap.add_argument("--home-events", type=int, default=100_000, help="events in each (the target: 100,000)")
    ap.add_argument("--starts", type=int, default=3, help="starts of each app measured (the best is kept)")
    args = ap.parse_args()
    sizes = [int(x.replace("_", "")) for x in args.events.split(",") if x.strip()]
    textual_import = float(subprocess.run([sys.executable, "-c", TEXTUAL_IMPORT], capture_output=True, text=True,
                                          cwd=ROOT).stdout.strip())
    best = lambda code, *a: min((_run(code, *a) for _ in range(args.starts)),  # noqa: E731
                                key=lambda r: r["first_frame"])
    bare = best(BARE_APP)["first_frame"]  # the floor: the best of a few starts, as for every app below
    print(f"this machine: import textual.app {textual_import:.2f} s; a bare Textual app of the Monitor's layout, "
          f"first frame {bare:.2f} s (the floor)", flush=True)
    met = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in sizes:
            session = write_session(root / f"s{n}", n)
            t = time.perf_counter()
            with open(session / "events.jsonl", "rb") as f:
                parsed = sum(1 for line in f if json.loads(line))
            parse_s = time.perf_counter() - t
            first = best(OPEN_AND_MEASURE, str(root), str(session), "0")
            ratio = first["first_frame"] / bare
            met &= ratio <= 1.5
            print(f"{parsed:,} events: first complete Monitor frame {first['first_frame']:.2f} s = {ratio:.2f}x the "
                  f"bare app (target <= 1.5x: {'MET' if ratio <= 1.5 else 'NOT MET'}); json.loads of every line "
                  f"{parse_s:.2f} s", flush=True)
            (session / "history.json").rename(session / "history.json.kept")
            cold = _run(OPEN_AND_MEASURE, str(root), str(session), "0")
            (session / "history.json").unlink(missing_ok=True)  # the one the console rebuilt and saved
            (session / "history.json.kept").rename(session / "history.json")
            print(f"   without history.json: newest step drawn at {cold['newest_frame']:.2f} s "
                  f"({cold['newest_frame'] / bare:.2f}x), the whole history read in the background by "
                  f"{cold['first_frame']:.2f} s (and saved for the next opening)", flush=True)
            if n != sizes[-1]:
                import shutil

                shutil.rmtree(root / f"s{n}")

        write_home(root / "many", args.home_sessions, args.home_events)
        home = best(OPEN_HOME, str(root / "many" / "home"), str(args.home_sessions))
        hr = home["first_frame"] / bare
        met &= hr <= 2
        print(f"Home with {args.home_sessions} sessions of {args.home_events:,} events: first frame "
              f"{home['first_frame']:.2f} s = {hr:.2f}x the bare app (target <= 2x: {'MET' if hr <= 2 else 'NOT MET'})"
              f"; every session listed by {home['all']:.2f} s", flush=True)

        # watching a live run: a writer appends 10 events/s while the console is open
        from engine.session import SessionWriter

        writer = SessionWriter.reopen(session)
        child = subprocess.Popen([sys.executable, "-c", OPEN_AND_MEASURE, str(root), str(session),
                                  str(args.watch_seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for line in child.stdout:
            if line.startswith("WATCHING"):
                break
        end = time.monotonic() + args.watch_seconds
        step = sizes[-1]
        while time.monotonic() < end:
            step += 1
            writer.event("metrics", step=step, max_steps=2 * step, loss=0.1, tokens_per_second=1500.0)
            time.sleep(0.1)
        out = child.communicate()[0]
        writer.close()
        watch = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])

    per_minute = watch["cpu_seconds"] / args.watch_seconds * 60
    met &= per_minute <= 1.8
    print(f"watching at 10 events/s: {per_minute:.2f} CPU s per minute "
          f"(target <= 1.8: {'MET' if per_minute <= 1.8 else 'NOT MET'}); events seen while watching "
          f"{watch['events_after'] - watch['events']}")
    print(f"torch imported by the console: {first['torch_imported'] or watch['torch_imported']}")
    print(f"all targets: {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
