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
from engine.session import list_sessions, read_session_json
from engine.session.records import read_results


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
    assert set(by_name) == {"demo-sft", "demo-eval-sft", "demo-round", "demo-pairs", "demo-dpo", "demo-eval-dpo"}
    for name, path in by_name.items():
        assert read_session_json(path)["status"] == "finished", name
        assert path.name in names.values()
    sft, dpo = by_name["demo-sft"], by_name["demo-dpo"]
    assert (sft / "model" / "model.safetensors").exists() or (sft / "merged" / "model.safetensors").exists()
    # the demo names its DPO plan (the README says why), and the planner still checks it fits
    assert read_session_json(dpo)["plan"]["name"].startswith("full")
    for ev, n in (("demo-eval-sft", 70), ("demo-round", 700), ("demo-eval-dpo", 70)):
        results = read_results(by_name[ev])
        assert len(results) == n
        marks, problems = read_marks(by_name[ev] / ASSESSMENTS)
        assert not problems
        judged = {m.annotator for m in marks}
        # the round is judged by `abstain` (its marks make the pairs); the test sets also by `consistency`,
        # from the sampled answers kept beside each greedy one
        assert judged == ({"auto:abstain"} if ev == "demo-round" else {"auto:abstain", "auto:consistency"}), judged
        assert len({m.item for m in marks if m.annotator == "auto:abstain"}) == n
        if ev != "demo-round":
            assert all(len(r["samples"]) == 2 for r in results)
    # progress for every stage, none silent
    for stage in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7"):
        assert f"[demo] {stage}" in r.stdout, stage
    state = json.loads((root / "demo-state.json").read_text())
    assert state["done"] and state["eval_dpo"] == by_name["demo-eval-dpo"].name
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
    tmux = ["tmux", "-L", name]  # a private server: never the user's own
    subprocess.run([*tmux, "new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", name], capture_output=True,
                                    text=True).stdout
            if "demo-sft" in screen and "step " in screen:
                break
            time.sleep(0.5)
        assert "demo-sft" in screen and "step " in screen, screen
        subprocess.run([*tmux, "send-keys", "-t", name, "q"], check=True)
        # leaving the console leaves the demo running: its evaluation session appears and finishes
        deadline = time.monotonic() + 300
        done = False
        while time.monotonic() < deadline and not done:
            evals = [i for i in list_sessions(root) if i.kind == "eval"]
            done = bool(evals) and evals[0].status == "finished"
            time.sleep(1)
        assert done, (root / "demo.log").read_text()[-2000:]
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)  # our private server only


def test_demo_pipeline_in_the_console_follows_each_run_and_ends_on_the_comparison(tmp_path, cache):
    if not shutil.which("tmux"):
        pytest.fail("tmux is needed for this test")
    root = tmp_path / "sessions"
    name = f"rounds-pipe-{os.getpid()}"
    tmux = ["tmux", "-L", name]
    cmd = (f"cd {ROOT} && ROUNDS_CACHE={cache} ROUNDS_FAULT_STEP_SLEEP=0.2 {sys.executable} -m console.cli "
           f"--sessions {root} demo --pipeline --quick")
    subprocess.run([*tmux, "new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd], check=True)
    try:
        seen, screen = set(), ""
        deadline = time.monotonic() + 900  # a generous ceiling: the whole quick pipeline on a busy machine
        while time.monotonic() < deadline and "Comparison" not in screen:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", name], capture_output=True,
                                    text=True).stdout
            seen |= {n for n in ("demo-sft", "demo-dpo") if n in screen and "step " in screen}
            time.sleep(0.5)
        assert "Comparison" in screen and "McNemar" in screen, (root / "demo.log").read_text()[-2000:] + screen
        assert "demo-dpo" in seen, seen  # the Monitor moved on to Stage B by itself
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
