"""Console cost: opening a big session, and watching a live one.

1. A session with 100,000 events: time from starting the app to the first complete
   Monitor frame (the whole history read, charts drawn), next to the time merely to parse
   the same file with json.loads line by line (so the ratio is the UI's own cost).
   Target: <= 1 s.
2. CPU seconds the console process uses per minute while a writer appends 10 events/s.
   Target: <= 2 s/min (about 3 % of a core).
3. Whether torch was imported by the console (it must not be).

    python bench/console_perf.py [--events 100000] [--watch-seconds 30]
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
        while not (isinstance(screen, MonitorScreen) and screen.loaded):
            await pilot.pause(0.01)
            screen = app.screen
        await pilot.pause(0)  # let the frame render
        result["first_frame"] = time.perf_counter() - t0
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


def write_session(root: Path, n: int) -> Path:
    from engine.session import SessionWriter

    w = SessionWriter.create(root, "train", name="big", stage="dpo")
    w.update(plan={"name": "qlora", "predicted_peak_bytes": 7 * 2**30})
    w.set_status("running")
    lines = []
    t = time.time() - n
    for i in range(n):
        if i % 10 == 9:
            lines.append({"time": t + i, "type": "system", "gpus": [], "host": {"cpu_percent": 30.0, "ram_used": 2**33,
                                                                              "ram_total": 2**35},
                          "process": {"rss": 2**32}})
        else:
            lines.append({"time": t + i, "type": "metrics", "step": i, "max_steps": 200_000, "loss": 1 / (1 + i),
                          "rewards/margins": i * 1e-4, "rewards/accuracies": 0.7, "tokens_per_second": 1500.0,
                          "learning_rate": 5e-6, "grad_norm": 1.0, "seconds_per_step": 1.0, "eta_seconds": 1e5})
    with open(w.path / "events.jsonl", "a") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    return w.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--watch-seconds", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        session = write_session(root, args.events)
        t = time.perf_counter()
        with open(session / "events.jsonl", "rb") as f:
            parsed = sum(1 for line in f if json.loads(line))
        parse_s = time.perf_counter() - t

        proc = subprocess.run([sys.executable, "-c", OPEN_AND_MEASURE, str(root), str(session), "0"],
                              capture_output=True, text=True, cwd=ROOT)
        first = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])

        # watching a live run: a writer appends 10 events/s while the console is open
        from engine.session import SessionWriter

        writer = SessionWriter.reopen(session)
        child = subprocess.Popen([sys.executable, "-c", OPEN_AND_MEASURE, str(root), str(session),
                                  str(args.watch_seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for line in child.stdout:
            if line.startswith("WATCHING"):
                break
        end = time.monotonic() + args.watch_seconds
        step = args.events
        while time.monotonic() < end:
            step += 1
            writer.event("metrics", step=step, max_steps=200_000, loss=0.1, tokens_per_second=1500.0)
            time.sleep(0.1)
        out = child.communicate()[0]
        watch = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])

    per_minute = watch["cpu_seconds"] / args.watch_seconds * 60
    print(f"session with {parsed:,} events ({args.events:,} written)")
    print(f"first complete Monitor frame: {first['first_frame']:.2f} s (start of the process to the drawn history; "
          f"target <= 1 s: {'MET' if first['first_frame'] <= 1 else 'NOT MET'})")
    print(f"json.loads of every line    : {parse_s:.2f} s  -> ratio {first['first_frame'] / parse_s:.2f}x")
    print(f"watching at 10 events/s      : {per_minute:.2f} CPU s per minute "
          f"(target <= 2: {'MET' if per_minute <= 2 else 'NOT MET'}); events seen while watching "
          f"{watch['events_after'] - watch['events']}")
    print(f"torch imported by the console: {first['torch_imported'] or watch['torch_imported']}")


if __name__ == "__main__":
    main()
