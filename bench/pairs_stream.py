"""Preference pairs from a large source: `rounds pairs --from-columns` against a pandas script.

Writes a MedHallu-shaped CSV (question, knowledge, ground_truth, hallucinated_answer; three
rows a question) of ``--size`` bytes, then builds train/val pairs from it twice, each in a
fresh process whose peak RSS is read from the kernel (``wait4``):

- ``rounds``: ``rounds pairs --from-columns ... --out DIR`` (streamed, two passes, buckets
  on disk, split by question, report);
- ``pandas``: what a loose script does: ``pd.read_csv`` the whole file, drop duplicates,
  split the questions at random, ``to_json`` both parts (no report, no row-level errors).

Prints both peaks and times and their ratios (ours / pandas). Target: peak RSS of rounds
<= 0.25x the pandas script's on a 1 GiB source, with the same number of pairs out.

    python bench/pairs_stream.py --size 1GiB
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAIVE = r'''
import json, random, sys
import pandas as pd
src, out = sys.argv[1], sys.argv[2]
df = pd.read_csv(src)
df = df.dropna(subset=["question", "ground_truth", "hallucinated_answer"])
df["prompt"] = df["knowledge"].fillna("") + "\n\n" + df["question"]
df = df.drop_duplicates(subset=["prompt", "ground_truth", "hallucinated_answer"])
df = df[df["ground_truth"].str.strip().str.lower() != df["hallucinated_answer"].str.strip().str.lower()]
keys = df["question"].str.lower().str.strip().unique().tolist()
random.Random(0).shuffle(keys)
val = set(keys[: round(len(keys) * 0.1)])
is_val = df["question"].str.lower().str.strip().isin(val)
cols = {"prompt": "prompt", "ground_truth": "chosen", "hallucinated_answer": "rejected"}
df[~is_val][list(cols)].rename(columns=cols).to_json(out + "/train_dpo.jsonl", orient="records", lines=True)
df[is_val][list(cols)].rename(columns=cols).to_json(out + "/val_dpo.jsonl", orient="records", lines=True)
'''


def make_source(path: Path, size: int) -> int:
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "knowledge", "ground_truth", "hallucinated_answer"])
        i = 0
        while f.tell() < size:
            knowledge = (f"Drug {i} is used to treat condition {i % 977}. The usual adult dose of drug {i} is "
                         f"{(i % 9 + 1) * 50} mg once daily. A common side effect of drug {i} is effect {i % 31}.")
            for k in range(3):
                w.writerow([f"r{i}-{k}", f"What is the usual adult dose of drug {i}?", knowledge,
                            f"The usual adult dose of drug {i} is {(i % 9 + 1) * 50} mg once daily.",
                            f"The usual adult dose of drug {i} is {(i % 9 + 1) * 50 + 25 * (k + 1)} mg twice daily."])
                rows += 1
            i += 1
    return rows


def measured(cmd: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS bytes, exit code) of a fresh process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(err[-2000:], file=sys.stderr)
    return seconds, usage.ru_maxrss * 1024, code


def count(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def main() -> int:
    from engine.plan import parse_size
    from engine.units import human_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256MiB", help="source file size (default 256MiB; the target is for 1GiB)")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        src = work / "medhallu_big.csv"
        t0 = time.monotonic()
        rows = make_source(src, size)
        print(f"source: {src.name}, {human_bytes(src.stat().st_size)}, {rows:,} rows "
              f"({rows // 3:,} questions x 3), written in {time.monotonic() - t0:.0f} s")
        (work / "naive").mkdir()
        ours = measured([sys.executable, "-m", "console.cli", "--sessions", str(work / "sessions"), "pairs",
                         "--from-columns", str(src), "--prompt", "question", "--context", "knowledge",
                         "--chosen", "ground_truth", "--rejected", "hallucinated_answer", "--out", str(work / "ours")])
        naive = measured([sys.executable, "-c", NAIVE, str(src), str(work / "naive")])
        n_ours = count(work / "ours" / "train_dpo.jsonl") + count(work / "ours" / "val_dpo.jsonl")
        n_naive = count(work / "naive" / "train_dpo.jsonl") + count(work / "naive" / "val_dpo.jsonl")
        rep = json.loads((work / "ours" / "pairs_report.json").read_text())
        print(f"{'':8} {'peak RSS':>12} {'seconds':>9} {'pairs out':>11}")
        print(f"{'rounds':8} {human_bytes(ours[1]):>12} {ours[0]:9.1f} {n_ours:11,}   (exit {ours[2]})")
        print(f"{'pandas':8} {human_bytes(naive[1]):>12} {naive[0]:9.1f} {n_naive:11,}   (exit {naive[2]})")
        ratio = ours[1] / naive[1]
        print(f"peak RSS ratio (rounds / pandas): {ratio:.3f}x   time ratio: {ours[0] / naive[0]:.2f}x")
        print(f"rounds: {rep['train_pairs']:,} train / {rep['val_pairs']:,} val pairs, "
              f"{rep['train_groups']:,} / {rep['val_groups']:,} questions, dropped {rep['dropped'] or 'nothing'}")
        ok = ratio <= 0.25 and n_ours == n_naive and not ours[2] and not naive[2]
        print(f"target (<= 0.25x the pandas script's peak RSS, same pairs out) "
              f"{'MET' if ok else 'NOT MET'}" + ("" if size >= 2**30 else " (at this size; the target is for 1GiB)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
