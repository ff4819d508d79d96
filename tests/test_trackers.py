"""Trackers alongside, not instead: `rounds train --report-to tensorboard` passes through to the
trainer (the session folder still records everything), and `rounds export SESSION --tensorboard
DIR` writes a session's scalars — both read back with TensorBoard's own reader, offline."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

from test_train import metrics, only_session, train

from conftest import ROOT, run_rounds
from engine.run.launch import TRACKERS
from engine.session import SessionWriter


def scalars(logdir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_report_to_tensorboard_writes_the_trainers_files_beside_the_session(tmp_path, tiny_model):
    r, root = train(tmp_path, "sft", "--max-steps", "3", "--report-to", "tensorboard", model=tiny_model)
    assert r.returncode == 0, r.stdout + r.stderr
    s = only_session(root)
    assert [m["step"] for m in metrics(s)] == [1, 2, 3]  # the session folder is still the record
    (logdir,) = {p.parent for p in (s / "tensorboard").rglob("events.out.tfevents.*")}
    got = scalars(logdir)
    assert [x.step for x in got["train/loss"]] == [1, 2, 3]
    assert [round(x.value, 4) for x in got["train/loss"]] == [round(m["loss"], 4) for m in metrics(s)]


def test_a_tracker_that_is_unknown_or_not_installed_is_refused_before_any_session(tmp_path, tiny_model):
    r, root = train(tmp_path, "sft", "--max-steps", "3", "--report-to", "carrier-pigeon", model=tiny_model)
    assert r.returncode != 0 and "not a tracker" in r.stderr and "tensorboard" in r.stderr
    missing = next((t for t, (module, _) in TRACKERS.items() if importlib.util.find_spec(module) is None), None)
    if missing is not None:  # (every tracker installed here: nothing to refuse)
        r, root = train(tmp_path, "sft", "--max-steps", "3", "--report-to", missing, model=tiny_model)
        assert r.returncode != 0 and "is not installed" in r.stderr and "pip install" in r.stderr, r.stderr
    assert not root.exists() or not any(root.iterdir())


def test_export_writes_every_recorded_number_at_its_step_and_time(tmp_path):
    w = SessionWriter.create(tmp_path / "sessions", "train", name="run", stage="dpo")
    w.set_status("running")
    times = []
    for step in (1, 2, 3):
        times.append(w.event("metrics", step=step, max_steps=3, loss=1.0 / step, **{"rewards/margins": 0.1 * step},
                             note="text is not a scalar")["time"])
        w.event("system", host={"cpu_percent": 50.0 + step, "ram_used": 2 * 2**30}, process={"rss": 2**30},
                gpus=[{"index": 0, "mem_used": 3 * 2**30, "util": 90}])
    w.event("metrics", step=4, max_steps=4, loss="nan")  # a diverged loss, kept as text in events
    w.event("eval", step=3, max_steps=3, eval_loss=0.5)
    w.set_status("finished")
    w.close()
    out = tmp_path / "tb"
    r = run_rounds("--sessions", str(tmp_path / "sessions"), "export", w.id, "--tensorboard", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"into {out / w.id}" in r.stdout
    got = scalars(out / w.id)
    assert [(x.step, round(x.value, 6)) for x in got["train/loss"][:3]] == [(1, 1.0), (2, 0.5), (3, 0.333333)]
    assert math.isnan(got["train/loss"][3].value) and got["train/loss"][3].step == 4
    assert [round(x.wall_time, 3) for x in got["train/loss"][:3]] == times  # the run's own times
    assert [round(x.value, 5) for x in got["train/rewards/margins"]] == [0.1, 0.2, 0.3]  # TensorBoard keeps float32
    assert [(x.step, x.value) for x in got["eval/loss"]] == [(3, 0.5)]
    assert [x.value for x in got["system/gpu0_mem_used_gib"]] == [3.0, 3.0, 3.0]
    assert [x.step for x in got["system/cpu_percent"]] == [1, 2, 3]
    assert "train/note" not in got
    again = run_rounds("--sessions", str(tmp_path / "sessions"), "export", w.id, "--tensorboard", str(out))
    assert again.returncode != 0 and "already holds an export" in again.stderr


def test_without_tensorboard_installed_export_names_the_extra(tmp_path):
    w = SessionWriter.create(tmp_path / "sessions", "train", name="run")
    w.close()
    code = ("import sys\n"
            "for m in ('tensorboard', 'torch.utils.tensorboard'):\n    sys.modules[m] = None\n"
            "from console.cli import main\n"
            f"sys.exit(main(['--sessions', {str(tmp_path / 'sessions')!r}, 'export', {w.id!r}, "
            f"'--tensorboard', {str(tmp_path / 'tb')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "pip install 'rounds[tensorboard]'" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr
