"""The assessment screen on a 10,000-item session: time to open, and keypress to the next item.

Measured with Textual's Pilot in one process: the time from creating the app to the first
item on screen, and the median time from pressing `f` (mark faithful, fsync, move on) to the
next item rendered. Baseline, side by side: loading the same results.jsonl with pandas.
Targets: open <= 1 s; keypress <= 30 ms.

    python bench/assess_perf.py [--items 10000] [--presses 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make(root: Path, n: int) -> Path:
    from engine.prescreen import flags
    from engine.session import SessionWriter
    from engine.session.records import append_results as _append_results
    from engine.session.records import write_csv

    w = SessionWriter.create(root, "eval", name="big", stage="eval", config={})
    records = []
    for i in range(n):
        answer = f"Drug{i} is used at {i % 90 + 10} mg twice daily for Quisby fever."
        ref = f"Drug{i} is used at {i % 90 + 10} mg once daily for Halvern's syndrome."
        records.append({"id": f"item-{i:05d}", "question": f"What is Drug{i} used for, and at what dose?",
                        "context": None, "reference": ref, "answer": answer, "model": "bench",
                        "flags": flags(answer, ref)})
    _append_results(w.path, records)
    write_csv(w.path)
    w.set_status("finished")
    return w.path


async def measure(session: Path, presses: int) -> dict:
    from console.app import RoundsApp
    from console.screens.assess import AssessScreen

    rendered: list[float] = []
    original = AssessScreen.action_mark

    def timed_mark(self, label):  # note when the screen has been redrawn after the mark
        original(self, label)
        self.call_after_refresh(lambda: rendered.append(time.perf_counter()))

    AssessScreen.action_mark = timed_mark
    t0 = time.perf_counter()
    app = RoundsApp(session.parent, assess=(session, "bench", False))
    async with app.run_test(size=(100, 30)) as pilot:
        while not isinstance(app.screen, AssessScreen):
            await pilot.pause(0)
        await pilot.pause(0)
        opened = time.perf_counter() - t0
        latency, roundtrip, idle = [], [], []
        for _ in range(presses):
            before = app.screen.model.pos
            t = time.perf_counter()
            await pilot.press("f")
            roundtrip.append(time.perf_counter() - t)
            latency.append(rendered[-1] - t)
            assert app.screen.model.pos == before + 1
            t = time.perf_counter()
            await pilot.press("x")  # a key bound to nothing: Pilot's own wait-for-idle cost
            idle.append(time.perf_counter() - t)
    AssessScreen.action_mark = original
    return {"open": opened, "keypress": statistics.median(latency), "roundtrip": statistics.median(roundtrip),
            "pilot_idle": statistics.median(idle)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--presses", type=int, default=50)
    args = ap.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        session = make(Path(tmp), args.items)
        t = time.perf_counter()
        df = pd.read_json(session / "results.jsonl", lines=True)
        pandas_s = time.perf_counter() - t
        assert len(df) == args.items
        r = asyncio.run(measure(session, args.presses))
        marks = sum(1 for _ in open(session / "assessments.jsonl"))
    print(f"{args.items:,} items; {args.presses} presses of f (mark, fsync, next)")
    opened = "MET" if r["open"] <= 1 else "NOT MET"
    print(f"open to the first item : {r['open'] * 1000:7.0f} ms (target <= 1000: {opened})")
    print(f"pandas.read_json alone : {pandas_s * 1000:7.0f} ms  -> ratio {r['open'] / pandas_s:.2f}x")
    verdict = "MET" if r["keypress"] <= 0.030 else "NOT MET"
    print(f"keypress to next item  : {r['keypress'] * 1000:7.1f} ms median, key sent to the redrawn screen "
          f"(target <= 30: {verdict})")
    print(f"  Pilot's press() round trip {r['roundtrip'] * 1000:.1f} ms, of which its wait-for-idle on a key bound "
          f"to nothing is {r['pilot_idle'] * 1000:.1f} ms")
    print(f"marks on disk          : {marks}")


if __name__ == "__main__":
    main()
