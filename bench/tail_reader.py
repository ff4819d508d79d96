"""Following a 100 MB events file once a second: EventTail vs re-reading the file.

The console polls a run's events.jsonl every second, all night. This prints the cost
of one poll that finds one new event, for our tail reader and for the obvious baseline
(read the whole file again and parse the lines past the ones already seen), measured
side by side on the same file in one run, and their ratio.

    python bench/tail_reader.py [--mb 100] [--polls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.session import EventTail  # noqa: E402


def naive_poll(path: Path, seen: int) -> tuple[list[dict], int]:
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")[:-1]
    return [json.loads(x) for x in lines[seen:]], len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--polls", type=int, default=20)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        line = json.dumps({"time": 1.0, "type": "metrics", "step": 1, "loss": 0.5, "rewards/margins": 0.1,
                           "pad": "x" * 200}).encode() + b"\n"
        n = args.mb * 1024 * 1024 // len(line)
        with open(path, "wb") as f:
            f.write(line * n)
        tail = EventTail(path)
        while tail.read():  # catch up once, as the monitor does at start
            pass
        seen = n
        ours, base = [], []
        with open(path, "ab", buffering=0) as out:
            for i in range(args.polls):
                out.write(json.dumps({"time": 2.0, "type": "metrics", "step": i}).encode() + b"\n")
                t = time.perf_counter()
                got = tail.read()
                ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                got_naive, seen = naive_poll(path, seen)
                base.append(time.perf_counter() - t)
                assert got == got_naive and len(got) == 1
        ours.sort()
        base.sort()
        med_ours, med_base = ours[len(ours) // 2], base[len(base) // 2]
        size = os.path.getsize(path) / 2**20
        print(f"file {size:.0f} MiB, {n:,} events, {args.polls} polls with one new event each")
        print(f"EventTail.read      median {med_ours * 1e6:10.1f} us")
        print(f"re-read whole file  median {med_base * 1e6:10.1f} us")
        print(f"ratio (baseline / ours): {med_base / med_ours:,.0f}x")


if __name__ == "__main__":
    main()
