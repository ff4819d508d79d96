"""The demo loop, CI-sized (tiny model, one epoch): every stage runs and writes what it should.

The efficacy target is a benchmark (bench/demo_pipeline.py), not a test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_rounds
from engine.assessment import ASSESSMENTS, read_marks
from engine.evaluate import read_results
from engine.session import list_sessions, read_session_json


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUNDS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_quick_pipeline_runs_every_stage(tmp_path, cache):
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "demo", "--pipeline", "--no-tui", "--quick",
                   env={"ROUNDS_CACHE": str(cache)}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((root / "demo-summary.json").read_text())
    names = summary["sessions"]
    by_name = {read_session_json(i.path)["name"]: i.path for i in list_sessions(root)}
    assert set(by_name) == {"demo-sft", "demo-eval-sft", "demo-round", "demo-dpo", "demo-eval-dpo"}
    for name, path in by_name.items():
        assert read_session_json(path)["status"] == "finished", name
        assert path.name in names.values()
    sft, dpo = by_name["demo-sft"], by_name["demo-dpo"]
    assert (sft / "model" / "model.safetensors").exists() or (sft / "merged" / "model.safetensors").exists()
    assert read_session_json(dpo)["plan"]["chosen_by"] == "auto"  # Stage B's plan comes from the planner
    for ev, n in (("demo-eval-sft", 70), ("demo-round", 340), ("demo-eval-dpo", 70)):
        assert len(read_results(by_name[ev])) == n
        marks, problems = read_marks(by_name[ev] / ASSESSMENTS)
        assert len({m.item for m in marks}) == n and not problems
        assert all(m.annotator == "auto:contains" for m in marks)
    assert read_session_json(by_name["demo-eval-sft"])["held_out"] is True
    pairs = Path(summary["pairs"]["train"])
    assert pairs.exists() and summary["pairs"]["train_pairs"] > 0
    assert (by_name["demo-eval-sft"] / f"compare-{by_name['demo-eval-dpo'].name}.md").exists()
    assert "exact McNemar p" in r.stdout and ("MET" in r.stdout)
    assert summary["comparison"]["paired"]["items"] == 70
    assert len(list((cache / "models").glob("demo-tiny-seed0-*/config.json"))) == 1


def test_demo_opens_the_console_on_the_running_sft(tmp_path, cache):
    if not shutil.which("tmux"):
        pytest.fail("tmux is needed for this test")
    root = tmp_path / "sessions"
    name = f"rounds-demo-{os.getpid()}"
    cmd = (f"cd {ROOT} && ROUNDS_CACHE={cache} ROUNDS_FAULT_STEP_SLEEP=0.2 {sys.executable} -m console.cli "
           f"--sessions {root} demo --quick")
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True,
                                    text=True).stdout
            if "demo-sft" in screen and "step " in screen:
                break
            time.sleep(0.5)
        assert "demo-sft" in screen and "step " in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=True)
        # leaving the console leaves the demo running: its evaluation session appears and finishes
        deadline = time.monotonic() + 300
        done = False
        while time.monotonic() < deadline and not done:
            evals = [i for i in list_sessions(root) if i.kind == "eval"]
            done = bool(evals) and evals[0].status == "finished"
            time.sleep(1)
        assert done, (root / "demo.log").read_text()[-2000:]
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
