"""A 1 GiB Parquet preference file validated in bounded memory, side by side with pandas.

    python bench/parquet_validate.py                  # a 1 GiB file (the target)
    python bench/parquet_validate.py --size-gib 0.1   # a quick look

Writes a Parquet file of DPO pairs (``prompt``, ``chosen``, ``rejected`` as text, every row
different, in row groups of 20,000 rows: pyarrow's default holds up to a million rows a group,
which pyarrow decodes a column chunk at a time) of the given size,
then, each in a fresh process, measures the peak RSS growth over the process's size after its
imports of:

- ``rounds validate FILE --kind dpo`` (``engine.data.validate_file(..., keep_rows=False)``:
  every row read and checked, duplicates found by digest, a sample kept for token counts);
- ``pandas.read_parquet(FILE)``, the baseline: what loading the file to look at it costs.

Target: rounds' growth <= 0.25 x pandas'. Both runs happen here, one after the other, on the
same file and machine, so the ratio is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30
ROW_GROUP = 20_000

CHILD = r"""
import json, resource, sys, time
import psutil
which, path = sys.argv[1], sys.argv[2]
if which == "rounds":
    sys.path.insert(0, sys.argv[3])
    from engine.data import format_report, validate_file
    import pyarrow.parquet  # noqa: F401 - imported before the baseline, as pandas' is
else:
    import pandas as pd
    import pyarrow.parquet  # noqa: F401
base = psutil.Process().memory_info().rss
t0 = time.perf_counter()
if which == "rounds":
    report = validate_file(path, "dpo", keep_rows=False)
    rows, verdict = report.valid, format_report(report).splitlines()[-1]
else:
    df = pd.read_parquet(path)
    rows, verdict = len(df), "read"
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"base": base, "peak": peak, "growth": peak - base, "rows": rows,
                              "seconds": seconds, "verdict": verdict}))
"""


def write_file(path: Path, size: int, seed: int = 0) -> int:
    """DPO pairs of random letters and spaces (text that compresses as little as real text
    under Parquet's snappy) until the file is ``size`` bytes; returns the rows written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz      ", dtype=np.uint8)
    schema = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])
    lengths = {"prompt": 300, "chosen": 700, "rejected": 700}
    groups = max(1, -(-size // (ROW_GROUP * (sum(lengths.values()) + 20))))  # snappy barely shrinks such text
    rows = 0
    with pq.ParquetWriter(path, schema, compression="snappy") as w:
        for _ in range(groups):
            cols = {}
            for name, n in lengths.items():
                text = letters[rng.integers(0, len(letters), size=ROW_GROUP * n)].tobytes().decode()
                cols[name] = [f"{rows + i} {text[i * n:(i + 1) * n]}" for i in range(ROW_GROUP)]
            w.write_table(pa.table(cols, schema=schema))
            rows += ROW_GROUP
    return rows


def measure(which: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, which, str(path), str(ROOT)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{which} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0, help="the Parquet file's size (default 1)")
    ap.add_argument("--keep", help="write the file here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "pairs.parquet"
        t0 = time.perf_counter()
        if not path.exists():
            write_file(path, int(args.size_gib * GiB))
        print(f"{path}: {path.stat().st_size / GiB:.2f} GiB Parquet ({time.perf_counter() - t0:.0f} s to write)",
              flush=True)
        ours = measure("rounds", path)
        base = measure("pandas", path)
        for name, m in (("rounds validate", ours), ("pandas.read_parquet", base)):
            print(f"{name:<22} {m['rows']:>10,} rows  peak RSS growth {m['growth'] / 2**20:>8,.0f} MiB  "
                  f"{m['seconds']:>6.0f} s  {m['verdict']}", flush=True)
        ratio = ours["growth"] / base["growth"]
        ok = ratio <= 0.25 and ours["rows"] == base["rows"]
        print(f"rounds / pandas peak RSS growth: {ratio:.3f} (target <= 0.25: {'MET' if ok else 'NOT MET'})")
        return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
