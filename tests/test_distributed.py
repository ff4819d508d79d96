"""`rounds train --launcher accelerate`: a 2-process DDP run on CPU (gloo), one session for all ranks."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

from test_train import DEMO, _wait_status, metrics, only_session, wait_for

from conftest import run_rounds
from engine.session import EventTail, read_session_json


def events(session: Path) -> list[dict]:
    return list(EventTail(session / "events.jsonl"))


def ddp(tmp_path: Path, model: Path, *args: str, env: dict | None = None, detach: bool = False):
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "train", "dpo", "--model", str(model), "--data",
                   str(DEMO / "dpo_train.jsonl"), "--plan", "lora", "--batch", "2", "--system-interval", "0.3",
                   "--launcher", "accelerate", "--num-processes", "2", "--name", "ddp",
                   *(("--detach",) if detach else ()), *args, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, only_session(root)


def test_two_rank_dpo_finishes_with_one_metrics_stream_and_system_records_from_both(tmp_path, tiny_model):
    r, s = ddp(tmp_path, tiny_model, "--max-steps", "4")
    meta = read_session_json(s)
    assert meta["status"] == "finished" and meta["world_size"] == 2
    assert "accelerate.commands.launch" in meta["launcher_command"] and "2" in meta["launcher_command"]
    assert [m["step"] for m in metrics(s)] == [1, 2, 3, 4]  # rank 0 alone writes metrics
    ranks = Counter(e.get("rank") for e in events(s) if e["type"] == "system")
    assert ranks[0] >= 1 and ranks[1] >= 1 and set(ranks) == {0, 1}
    assert all(e["world_size"] == 2 for e in events(s) if e["type"] == "system")
    assert (s / "adapter").is_dir() and "x 2 ranks" in r.stdout


def _rank_pid(s: Path, rank: int) -> int:
    def find():
        for e in events(s):
            if e["type"] == "system" and e.get("rank") == rank and e.get("process", {}).get("pid"):
                return e["process"]["pid"]
        return None

    return wait_for(find, what=f"a system record from rank {rank}")


def _wait_step(s: Path, step: int) -> None:
    wait_for(lambda: any(m["step"] >= step for m in metrics(s)), timeout=180, what=f"step {step}")


def test_a_signal_to_the_launcher_stops_every_rank_at_one_step_and_resume_finishes(tmp_path, tiny_model):
    _, s = ddp(tmp_path, tiny_model, "--max-steps", "10", "--save-steps", "100", detach=True,
               env={"ROUNDS_FAULT_STEP_SLEEP": "0.5"})
    supervisor = wait_for(lambda: read_session_json(s).get("supervisor_pid"), what="the supervisor")
    _rank_pid(s, 1)
    _wait_step(s, 3)
    os.kill(supervisor, signal.SIGTERM)
    assert _wait_status(s) == "stopped"
    stopped_at = max(m["step"] for m in metrics(s))
    assert 3 <= stopped_at < 10
    ckpt = s / "checkpoints" / f"checkpoint-{stopped_at}"
    marker = json.loads((ckpt / "rounds-complete.json").read_text())
    assert marker["step"] == stopped_at and marker["world_size"] == 2
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()  # both ranks saved
    r = run_rounds("--sessions", str(s.parent), "resume", s.name, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_session_json(s)["status"] == "finished"
    assert [m["step"] for m in metrics(s)] == list(range(1, 11))  # both ranks went on from the same step


def test_a_rank_that_dies_marks_the_run_failed_naming_it(tmp_path, tiny_model):
    _, s = ddp(tmp_path, tiny_model, "--max-steps", "30", detach=True, env={"ROUNDS_FAULT_STEP_SLEEP": "0.5"})
    pid1 = _rank_pid(s, 1)
    _wait_step(s, 2)
    os.kill(pid1, signal.SIGKILL)
    # rank 0 fails first (its peer is gone); then the supervisor names the rank that died
    meta = wait_for(lambda: "failed_rank" in read_session_json(s) and read_session_json(s), timeout=120,
                    what="the failed rank")
    assert meta["status"] == "failed"
    assert meta["failed_rank"] == 1 and "rank 1 killed by SIGKILL" in meta["error"]
    assert any(e.get("kind") == "error" and e.get("failed_rank") == 1 for e in events(s))


def test_launcher_flags_are_checked(tmp_path, tiny_model):
    root = tmp_path / "sessions"
    base = ("--sessions", str(root), "train", "dpo", "--model", str(tiny_model), "--data",
            str(DEMO / "dpo_train.jsonl"), "--plan", "lora")
    r = run_rounds(*base, "--num-processes", "2")
    assert r.returncode == 1 and "need --launcher accelerate" in r.stderr
    r = run_rounds(*base, "--launcher", "accelerate", "--accelerate-config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    assert not root.exists() or not any(root.iterdir())  # refused before any session


def test_the_readme_ddp_config_runs(tmp_path, tiny_model):
    config = Path(__file__).resolve().parent.parent / "docs" / "accelerate" / "ddp.yaml"
    _, s = ddp(tmp_path, tiny_model, "--max-steps", "2", "--accelerate-config", str(config))
    meta = read_session_json(s)
    assert meta["status"] == "finished" and meta["world_size"] == 2 and str(config) in meta["launcher_command"]
    assert {e.get("rank") for e in events(s) if e["type"] == "system"} == {0, 1}


def test_out_of_memory_on_a_rank_relaunches_every_rank_with_half_the_micro_batch(tmp_path, tiny_model):
    r, s = ddp(tmp_path, tiny_model, "--max-steps", "6", "--batch", "4", "--save-steps", "2",
               env={"ROUNDS_FAULT_OOM_AT_STEP": "4"})
    meta = read_session_json(s)
    assert meta["status"] == "finished", r.stdout[-3000:]
    assert meta["config"]["batch"] == 2 and meta["config"]["grad_accum"] == 2 and meta["oom_recoveries"] == 1
    rec = [e for e in events(s) if e.get("kind") == "oom_recovered"]
    assert len(rec) == 1 and rec[0]["micro_batch"] == [4, 2] and rec[0]["grad_accum"] == [1, 2]
    assert "relaunching every rank with micro-batch 4 -> 2" in r.stdout
    steps = [m["step"] for m in metrics(s)]
    assert steps[-1] == 6 and sorted(set(steps)) == [1, 2, 3, 4, 5, 6]  # resumed from checkpoint-2: 3 again


def test_a_session_prepared_for_a_launch_the_user_runs(tmp_path, tiny_model):
    import subprocess
    import sys

    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "train", "dpo", "--model", str(tiny_model), "--data",
                   str(DEMO / "dpo_train.jsonl"), "--plan", "lora", "--batch", "2", "--max-steps", "2",
                   "--system-interval", "0.3", "--prepare-only")
    assert r.returncode == 0 and "-m engine.run.rank" in r.stdout, r.stderr
    s = only_session(root)
    assert read_session_json(s)["status"] == "planned"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "engine.run.rank", str(s)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    meta = read_session_json(s)
    assert meta["status"] == "finished" and meta["world_size"] == 2
    assert [m["step"] for m in metrics(s)] == [1, 2]
    assert {e.get("rank") for e in events(s) if e["type"] == "system"} == {0, 1}


def test_auto_plan_on_cpu_gives_each_rank_its_share_of_the_ram(tiny_model):
    from engine.recipe import TrainSpec
    from engine.run.launch import resolve_plan

    def usable(**kw) -> int:
        spec = TrainSpec(stage="dpo", model=str(tiny_model), data=str(DEMO / "dpo_train.jsonl"), plan="auto",
                         device="cpu", **kw)
        return resolve_plan(spec, 100, budget_bytes=8 * 2**30)[1]["usable_bytes"]

    assert usable(launcher="accelerate", num_processes=2) == usable() // 2


def test_a_rank_destroys_its_process_group_before_it_exits(tmp_path, tiny_model):
    """Left to interpreter finalisation, gloo's threads can abort a rank that finished (SIGABRT,
    "terminate called without an active exception"), and the launcher reports the run failed."""
    import shutil
    import subprocess
    import sys

    data = tmp_path / "pairs.jsonl"
    shutil.copy(DEMO / "dpo_train.jsonl", data)
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "train", "dpo", "--model", str(tiny_model), "--data", str(data),
                   "--plan", "lora", "--batch", "2", "--max-steps", "1", "--prepare-only")
    assert r.returncode == 0, r.stderr
    s = only_session(root)
    data.unlink()  # the run fails as soon as it reads its data: the quickest way through its ending
    code = ("import sys, torch.distributed as dist\n"
            f"dist.init_process_group('gloo', init_method={(tmp_path / 'store').as_uri()!r}, rank=0, world_size=1)\n"
            "from pathlib import Path\nfrom engine.run.worker import run_session\n"
            f"rc = run_session(Path({str(s)!r}))\n"
            "print('rc', rc, 'initialized', dist.is_initialized())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    assert "rc 1 initialized False" in p.stdout, p.stdout + p.stderr
    assert read_session_json(s)["status"] == "failed"
