"""`rounds import-run DIR`: a Trainer's trainer_state.json becomes a session Home lists and the
Monitor draws — from a real Hugging Face Trainer run on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_callback import env, script

from conftest import run_rounds
from engine.errors import UserError
from engine.run.importrun import find_state, import_run
from engine.session import EventTail, list_sessions, read_session_json

TRAINER = """
import sys
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainingArguments)

model_dir, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ds = Dataset.from_dict({"text": [f"the dose was {i} mg on day {i % 7}" for i in range(24)]})
ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
args = TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=2, logging_steps=1,
                         eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=2,
                         report_to="none", use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds.select(range(4)),
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
trainer.train()
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> Path:
    tmp = tmp_path_factory.mktemp("hf")
    out = tmp / "stage-b-run"
    r = subprocess.run([sys.executable, str(script(tmp, TRAINER)), str(tiny_model), str(out)], cwd=tmp,
                       env=env(tmp / "unused"), capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def events(s: Path) -> list[dict]:
    return list(EventTail(s / "events.jsonl"))


def test_a_trainers_output_folder_becomes_a_finished_session_with_its_curves(tmp_path, trained):
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "import-run", str(trained), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 logged steps, 2 evaluations" in r.stdout and "finished at step 6 of 6" in r.stdout, r.stdout
    (info,) = list_sessions(root)
    assert info.status == "finished" and info.kind == "train" and info.name == "stage-b-run"
    assert info.progress == 1.0  # Home's progress column
    state = json.loads((trained / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    ev = events(info.path)
    got = [e for e in ev if e["type"] == "metrics"]
    assert [e["step"] for e in got] == [e["step"] for e in logged] == [1, 2, 3, 4, 5, 6]
    assert [e["loss"] for e in got] == [e["loss"] for e in logged] and all(e["max_steps"] == 6 for e in got)
    assert [e["step"] for e in ev if e["type"] == "eval"] == [3, 6]
    assert [e for e in ev if e.get("kind") == "finished"][-1]["step"] == 6
    meta = read_session_json(info.path)
    assert meta["imported_from"] == str((trained / "checkpoint-6" / "trainer_state.json").resolve())

    again = run_rounds("--sessions", str(root), "import-run", str(trained), timeout=300)
    assert again.returncode != 0 and f"is already session {info.id}" in again.stderr and "--again" in again.stderr


def test_a_checkpoint_of_a_run_cut_short_is_imported_as_stopped(tmp_path, trained):
    w = import_run(trained / "checkpoint-4", tmp_path, stage="sft")
    meta = read_session_json(w.path)
    assert meta["status"] == "stopped" and "step 4 of 6" in meta["reason"] and meta["stage"] == "sft"
    assert [e["step"] for e in events(w.path) if e["type"] == "metrics"] == [1, 2, 3, 4]


def test_the_monitor_says_the_run_was_imported(tmp_path, trained):
    from console.screens.monitor import header_text
    from console.state import MonitorState
    from console.widgets.system import system_text

    w = import_run(trained, tmp_path)
    st = MonitorState(meta=read_session_json(w.path))
    st.feed(events(w.path))
    title, _, status = header_text(st, w.id, 0.0, 100)
    assert "imported" in title.plain and status == "finished" and "plan -" not in title.plain
    assert "imported from its trainer_state.json" in system_text(st, 60).plain  # not "waiting for..."


@pytest.mark.parametrize("content, field, message", [
    (b"{not json", None, "invalid JSON"),
    (b"[1, 2]", None, "expected a JSON object"),
    (b'{"log_history": {"a": 1}}', "log_history", "'log_history' must be a list"),
    (b'{"log_history": [], "global_step": "six"}', "global_step", "whole number of steps"),
    (b"\xff\xfe{}", None, "not UTF-8"),
    (b"[" * 50_000 + b"]" * 50_000, None, "nested too deeply"),
])
def test_a_damaged_trainer_state_is_a_clear_error_and_no_session(tmp_path, content, field, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer_state.json").write_bytes(content)
    with pytest.raises(UserError) as e:
        import_run(tmp_path / "run", tmp_path / "sessions")
    assert message in e.value.message and "trainer_state.json" in e.value.message and e.value.field == field
    assert not (tmp_path / "sessions").exists() or not list((tmp_path / "sessions").iterdir())


def test_log_entries_that_are_not_objects_are_skipped_and_counted_and_the_summary_ends_it(tmp_path):
    (tmp_path / "run").mkdir()
    state = {"global_step": 2, "max_steps": 2, "log_history": [
        {"step": 1, "loss": 1.0}, "junk", {"loss": 3}, {"step": 2, "loss": float("nan")},
        {"step": 2, "train_runtime": 4.0, "train_loss": 0.9, "train_samples_per_second": 1.0}]}
    (tmp_path / "run" / "trainer_state.json").write_text(json.dumps(state))
    w = import_run(tmp_path / "run", tmp_path / "s")
    ev = events(w.path)
    assert [e["loss"] for e in ev if e["type"] == "metrics"] == [1.0, "nan"]  # NaN kept visible, as telemetry does
    assert "2 not objects with a step, skipped" in ev[0]["message"]
    (finished,) = [e for e in ev if e.get("kind") == "finished"]  # the summary: not a metrics point
    assert finished["train_loss"] == 0.9 and finished["seconds_per_step"] == 2.0


def test_where_there_is_no_trainer_state_it_says_where_it_looked(tmp_path):
    with pytest.raises(UserError) as e:
        find_state(tmp_path)
    assert "no trainer_state.json here or in a checkpoint-N folder" in e.value.message
    r = run_rounds("--sessions", str(tmp_path / "s"), "import-run", str(tmp_path / "nope"))
    assert r.returncode != 0 and "no such folder" in r.stderr and "Traceback" not in r.stderr


def test_log_keys_named_like_a_records_own_fields_are_dropped_not_a_crash(tmp_path):
    (tmp_path / "run").mkdir()
    state = {"global_step": 1, "max_steps": 1, "log_history": [
        {"step": 1, "loss": 0.5, "max_steps": "x", "type": "weird", "time": 3, "sync": True, "kind": "k"},
        {"step": 1, "train_runtime": 2.0, "train_loss": 0.5, "kind": "x", "outputs": 1}]}
    (tmp_path / "run" / "trainer_state.json").write_text(json.dumps(state))
    w = import_run(tmp_path / "run", tmp_path / "s")
    (m,) = [e for e in events(w.path) if e["type"] == "metrics"]
    assert m["loss"] == 0.5 and m["max_steps"] == 1 and "sync" not in m and m["time"] != 3
    assert read_session_json(w.path)["status"] == "finished"
