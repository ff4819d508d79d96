"""Crash loop: marking is killed with SIGKILL at random moments; no acknowledged mark is lost or doubled.

    python bench/crash_marks.py               # 200 kills (the target)
    python bench/crash_marks.py --kills 20

A child process opens an evaluation session the way the assessment screen does
(``console.assess_state.AssessModel``: the annotator's writer lock, the marks read back) and
marks items as fast as it can, each with a unique note; after ``mark()`` returns — the moment the
screen shows the mark as saved — it prints ``ack N``. The parent kills the child with ``kill -9``
at a random moment (during start-up and lock-taking, or a few milliseconds into marking), starts a
new one, and so on. Then it reads ``assessments.jsonl`` and checks that every acknowledged mark is
there exactly once, that no mark is there twice, and that the session still opens and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELS = ("faithful", "hallucinated", "abstained", "unsure")


def child(session: Path, start: int) -> None:
    from console.assess_state import AssessModel, Draft

    model = AssessModel(session, "crash-loop")
    print("ready", flush=True)
    seq = start
    while True:
        model.pos = seq % len(model.items)
        model.drafts[model.item["id"]] = Draft(note=f"seq-{seq}")
        model.mark(LABELS[seq % len(LABELS)])
        print(f"ack {seq}", flush=True)  # the mark is on disk: what the screen shows as saved
        seq += 1


def make_session(root: Path, items: int) -> Path:
    from engine.evaluate import import_results

    src = root / "answers.csv"
    src.write_text("question,reference,answer\n" + "".join(
        f"Question {i}?,Reference {i}.,Answer {i}.\n" for i in range(items)))
    return import_results(str(src), {}, root / "sessions").path


def run(kills: int, items: int = 40, seed: int = 0, echo=print) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="crash-marks-"))
    session = make_session(work, items)
    acked: list[int] = []
    started_marking = 0
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(session), "--start", str(k * 10**6)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        if rng.random() < 0.2:  # during start-up: imports, reading the marks, taking the lock
            time.sleep(rng.uniform(0, 0.4))
        else:  # while marking: once the first mark is acknowledged, a few milliseconds later
            line = proc.stdout.readline()
            while line and not line.startswith("ack"):
                line = proc.stdout.readline()
            if line.startswith("ack"):
                acked.append(int(line.split()[1]))
                started_marking += 1
            time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        acked += [int(x.split()[1]) for x in out.splitlines() if x.startswith("ack")]
        if proc.returncode != -signal.SIGKILL:
            raise SystemExit(f"the marking child ended by itself (exit {proc.returncode}):\n{err}")
        if echo and (k + 1) % 50 == 0:
            echo(f"  {k + 1} kills, {len(acked)} acknowledged marks so far")

    from engine.assessment import ASSESSMENTS, read_marks

    marks, problems = read_marks(session / ASSESSMENTS)
    on_disk = Counter(m.note for m in marks)
    lost = [n for n in acked if on_disk[f"seq-{n}"] == 0]
    doubled = [note for note, c in on_disk.items() if c > 1]
    # the session still opens for marking and reports
    from console.assess_state import AssessModel
    from engine.report import session_report

    model = AssessModel(session, "crash-loop")
    model.close()
    rep = session_report(session)
    return {"kills": kills, "kills_while_marking": started_marking, "acknowledged": len(acked),
            "marks_on_disk": len(marks), "unacknowledged_on_disk": len(set(on_disk) - {f"seq-{n}" for n in acked}),
            "lost": len(lost), "doubled": len(doubled),
            "damaged_lines": len(problems), "report_items": rep["items"], "session": str(session)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child), args.start)
        return 0
    t = time.perf_counter()
    r = run(args.kills, seed=args.seed)
    print(json.dumps(r, indent=1))
    ok = r["lost"] == 0 and r["doubled"] == 0
    print(f"{r['kills']} kills with SIGKILL ({r['kills_while_marking']} while marking), "
          f"{r['acknowledged']:,} acknowledged marks: {r['lost']} lost, {r['doubled']} doubled "
          f"(target 0 and 0: {'MET' if ok else 'NOT MET'}); {time.perf_counter() - t:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    if "--child" in sys.argv:
        os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
