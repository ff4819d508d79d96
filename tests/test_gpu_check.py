"""bench/gpu_check.py's CPU path: the same prepared script that is run first on a GPU, on a small
model here — each point in its own process, measured against the planner, and a point predicted
to fit that runs out of memory fails it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.py"


def gpu_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "2", *args],
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def test_the_cpu_path_measures_each_point_against_the_plan(tmp_path):
    out = tmp_path / "points.jsonl"
    r = gpu_check("--stages", "dpo", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("cpu dpo ")]
    assert len(rows) == 2 and all(" pad" in row for row in rows), r.stdout  # chosen and rejected differ in length
    errors = [float(m.group(1)) for row in rows if (m := re.search(r"(-?\d+\.\d)%", row))]
    assert len(errors) == 2 and all(abs(e) <= 10 for e in errors), r.stdout  # the planner's own target
    import json

    points = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["point"]["batch"] for p in points] == [1, 4] and all(p["measured"]["measured"] > 0 for p in points)


def test_a_point_predicted_to_fit_that_runs_out_of_memory_fails_the_script():
    r = gpu_check("--stages", "sft", env={"ROUNDS_FAULT_OOM_AT_STEP": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("cpu sft ")]
    assert "predicted to fit, but ran out of memory" in r.stdout and f"FAILED: {len(rows)} point(s)" in r.stdout


def test_bad_arguments_are_refused_before_anything_is_built():
    r = gpu_check("--stages", "ppo")
    assert r.returncode == 2 and "unknown stage(s) ppo" in r.stderr


def test_a_point_that_takes_too_long_fails_the_script_instead_of_hanging_it():
    r = gpu_check("--stages", "sft", "--point-timeout", "0.01")  # not even Python's start-up fits in 10 ms
    assert r.returncode == 1, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("cpu sft ")]
    assert all("TIMED OUT after 0.01 s (--point-timeout)" in row for row in rows) and rows, r.stdout
    assert f"FAILED: {len(rows)} point(s)" in r.stdout
    # micro-batches 1 and 4, and the recommended plan's own whatever it is: it is always run
    assert {" mb1 ", " mb4 "} <= {w for row in rows for w in (" mb1 ", " mb4 ") if w in row + " "}, r.stdout
    assert sum("(rec)" in row for row in rows) == 1, r.stdout
