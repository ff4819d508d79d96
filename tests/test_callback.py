"""Bring your own trainer: a user's own script, plus `trainer.add_callback(rounds_callback(...))`,
becomes a session that Home lists and the Monitor follows, and the Monitor's requests reach it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from test_train import DEMO, wait_for

from conftest import ROOT
from engine.callback import rounds_callback
from engine.session import EventTail, list_sessions, read_session_json
from engine.session.requests import request_checkpoint, request_stop

PLAIN = """
import sys
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainerCallback, TrainingArguments)

from engine.callback import rounds_callback

model_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
texts = ["the patient was given aspirin", "the dose was doubled on day two", "no adverse events were seen"] * 8
ds = Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=2, logging_steps=1,
                         report_to="none", save_strategy="no", use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=ds,
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))


class Bug(TrainerCallback):  # the user's own mistake, at a step of their choosing
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == int(sys.argv[4] if len(sys.argv) > 4 else 0):
            raise RuntimeError("my metric broke")


trainer.add_callback(Bug())
trainer.add_callback(rounds_callback("plain", system_interval=0.3))
trainer.train()
"""

DPO = """
import sys, time
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from engine.callback import rounds_callback

model_dir, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
train_dataset = load_dataset("json", data_files=data, split="train")
training_args = DPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=2, logging_steps=1,
                          report_to="none", save_strategy="no", use_cpu=True)
trainer = DPOTrainer(model=model, args=training_args, processing_class=tokenizer, train_dataset=train_dataset)


class Slow(TrainerCallback):  # a long run, so that there is time to ask it for things
    def on_step_end(self, *a, **k):
        time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 0)


trainer.add_callback(Slow())
trainer.add_callback(rounds_callback("stage-b", system_interval=0.3))
trainer.train()
print("after train", flush=True)
"""


def script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user_script.py"
    path.write_text(textwrap.dedent(text))
    return path


def env(root: Path) -> dict:
    return {**os.environ, "ROUNDS_SESSIONS": str(root), "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
            "PYTHONPATH": str(ROOT)}


def start(tmp_path: Path, text: str, *args: str) -> tuple[subprocess.Popen, Path]:
    root = tmp_path / "sessions"
    p = subprocess.Popen([sys.executable, str(script(tmp_path, text)), *args], cwd=tmp_path, env=env(root),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p, root


def only(root: Path) -> Path:
    wait_for(lambda: root.is_dir() and any(root.iterdir()), timeout=300, what="the session folder")
    (s,) = [p for p in root.iterdir() if p.is_dir()]
    return s


def events(s: Path) -> list[dict]:
    return list(EventTail(s / "events.jsonl"))


def test_a_plain_trainer_script_becomes_a_finished_session_home_lists(tmp_path, tiny_model):
    p, root = start(tmp_path, PLAIN, str(tiny_model), str(tmp_path / "out"), "4")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    s = only(root)
    meta = read_session_json(s)
    assert meta["status"] == "finished" and meta["kind"] == "train" and meta["control"] == "requests"
    assert meta["name"] == "plain" and meta["config"]["max_steps"] == 4 and meta["ended"]
    ev = events(s)
    assert [e["step"] for e in ev if e["type"] == "metrics"] == [1, 2, 3, 4]
    assert all("loss" in e for e in ev if e["type"] == "metrics")
    assert any(e["type"] == "system" for e in ev)
    assert [e.get("kind") for e in ev if e["type"] == "event"][-1] == "finished"
    (info,) = list_sessions(root)
    assert info.status == "finished" and info.progress == 1.0


def test_a_trl_dpo_script_is_followed_live_and_stops_when_asked(tmp_path, tiny_model):
    out = tmp_path / "out"
    p, root = start(tmp_path, DPO, str(tiny_model), str(DEMO / "dpo_train.jsonl"), str(out), "500", "0.2")
    try:
        s = only(root)
        wait_for(lambda: any(e["type"] == "metrics" for e in events(s)), timeout=300, what="the first step")
        meta = read_session_json(s)
        assert meta["status"] == "running" and meta["stage"] == "dpo"  # from DPOConfig
        assert meta["stage_info"]["charts"]  # the Monitor's DPO charts (rewards, margins)
        first = [e for e in events(s) if e["type"] == "metrics"][0]
        assert first["step"] == 1 and "rewards/margins" in first and "loss" in first  # TRL's own logs
        request_checkpoint(s, who="the test")
        wait_for(lambda: any(e.get("reason") == "checkpoint requested" for e in events(s)), timeout=300,
                 what="the requested checkpoint")
        assert read_session_json(s)["status"] == "running"  # a checkpoint does not stop the run
        request_stop(s, who="the test")
        text, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "after train" in text, text  # the script goes on after train() returns
    meta = read_session_json(s)
    steps = [e["step"] for e in events(s) if e["type"] == "metrics"]
    assert meta["status"] == "stopped" and meta["reason"] == "stop requested" and steps[-1] < 500
    saves = [e for e in events(s) if e.get("kind") == "checkpoint"]
    assert [e["reason"] for e in saves] == ["checkpoint requested", "stop requested"]  # save_strategy "no"
    assert all(e["seconds"] >= 0 for e in saves)  # the Monitor's "saved in N s"
    saved = [e["path"] for e in saves]
    assert all(Path(x).is_dir() for x in saved)
    assert Path(saved[-1]).name == f"checkpoint-{steps[-1]}"
    assert not (s / "requests" / "stop").exists() and not (s / "requests" / "checkpoint").exists()


def test_an_exception_in_the_script_marks_the_session_failed_with_it(tmp_path, tiny_model):
    p, root = start(tmp_path, PLAIN, str(tiny_model), str(tmp_path / "out"), "6", "2")
    out, _ = p.communicate(timeout=600)
    assert p.returncode != 0 and "my metric broke" in out  # the user's traceback is still printed
    meta = read_session_json(only(root))
    assert meta["status"] == "failed" and meta["error"] == "RuntimeError: my metric broke"
    assert [e.get("kind") for e in events(only(root)) if e["type"] == "event"][-1] == "error"


def test_the_callback_imports_without_textual_and_refuses_a_bad_name_at_once():
    code = ("import sys, engine.callback as c\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'textual'], 'textual imported'\n"
            "try:\n    c.rounds_callback('../escape')\nexcept Exception as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
    refused = "refused: rounds_callback(name='../escape'): session name '../escape' is not allowed"
    assert r.returncode == 0 and refused in r.stdout, r.stdout + r.stderr


def test_the_monitor_does_not_signal_a_script_it_did_not_start(tmp_path, monkeypatch):
    """A stop for a callback session is the request file alone: a SIGTERM could kill the user's script."""
    import asyncio

    from console.app import RoundsApp
    from engine.session import SessionWriter

    w = SessionWriter.create(tmp_path, "train", name="theirs", stage="dpo")
    w.update(control="requests")
    w.set_status("running")
    w.event("metrics", step=1, max_steps=10, loss=0.69)
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))

    async def go():
        app = RoundsApp(tmp_path, session=w.path)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("s")
            await pilot.pause()
            await pilot.press("y")
            deadline = time.monotonic() + 60
            while not (w.path / "requests" / "stop").exists() and time.monotonic() < deadline:
                await pilot.pause(0.1)

    asyncio.run(go())
    assert (w.path / "requests" / "stop").exists() and not [s for s in sent if s[1] != 0]


def test_the_monitor_header_names_a_run_from_the_users_own_script():
    from console.screens.monitor import header_text
    from console.state import MonitorState

    meta = {"kind": "train", "stage": "dpo", "name": "stage-b", "status": "finished", "control": "requests",
            "plan": None}
    title, _, _ = header_text(MonitorState(meta=meta), "stage-b", 0.0, 100)
    assert "your own script" in title.plain and "plan -" not in title.plain
    title, _, _ = header_text(MonitorState(meta={**meta, "control": None, "plan": {"name": "qlora"}}), "x", 0.0, 100)
    assert "plan qlora" in title.plain


# ---------------------------------------------------------------------------- the callback's own robustness

def _args(tmp_path: Path, **over):
    from types import SimpleNamespace

    return SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=1,
                           output_dir=str(tmp_path / "out"), learning_rate=1e-4, num_train_epochs=1.0,
                           device="cpu", **over)


def _state(step: int = 0, max_steps: int = 10):
    from transformers import TrainerState

    st = TrainerState()
    st.global_step, st.max_steps = step, max_steps
    return st


def test_step_logs_that_carry_train_runtime_are_metrics_and_only_the_summary_is_final(tmp_path):
    """With include_num_input_tokens_seen the trainer puts train_runtime in every step's logs."""
    from transformers import TrainerControl

    from engine.session import SessionWriter
    from engine.telemetry import TelemetryCallback

    w = SessionWriter.create(tmp_path, "train", name="t")
    t = TelemetryCallback(w, samples_per_step=2)
    args, control = _args(tmp_path), TrainerControl()
    for step in (1, 2):
        t.on_log(args, _state(step), control, logs={"loss": 0.7, "num_input_tokens_seen": 64 * step,
                                                    "train_runtime": 1.5 * step, "train_tokens_per_second": 42.0})
    t.on_log(args, _state(2), control, logs={"train_runtime": 3.0, "train_loss": 0.69, "train_samples_per_second": 1})
    w.close()
    assert [e["step"] for e in events(w.path) if e["type"] == "metrics"] == [1, 2]
    assert t.final["train_loss"] == 0.69


def test_a_second_train_call_is_a_session_of_its_own(tmp_path):
    from transformers import TrainerControl

    cb = rounds_callback("twice", sessions=tmp_path / "s", system_interval=5)
    for _ in range(2):
        args, control = _args(tmp_path), TrainerControl()
        cb.on_train_begin(args, _state(0, 2), control)
        for step in (1, 2):
            cb.on_step_begin(args, _state(step - 1, 2), control)
            cb.on_step_end(args, _state(step, 2), control)
            cb.on_log(args, _state(step, 2), control, logs={"loss": 1.0 / step})
        cb.on_train_end(args, _state(2, 2), control)
    first, second = cb.sessions
    assert first != second
    for s in (first, second):
        assert read_session_json(s)["status"] == "finished"
        assert [e["step"] for e in events(s) if e["type"] == "metrics"] == [1, 2]  # not appended to the first


def test_a_save_the_trainer_did_not_make_gives_no_reason_to_the_next_one(tmp_path):
    """A requested save the trainer dropped (save_strategy="best" and no better metric) must not
    label a later save of the trainer's own "checkpoint requested"."""
    from transformers import TrainerControl

    cb = rounds_callback("reasons", sessions=tmp_path / "s", system_interval=5)
    args = _args(tmp_path)
    cb.on_train_begin(args, _state(0, 10), TrainerControl())
    request_checkpoint(cb.session, who="the test")
    control = TrainerControl()
    cb.on_step_begin(args, _state(0), control)
    cb.on_step_end(args, _state(1), control)
    assert control.should_save  # asked for; the trainer then does not save
    control = TrainerControl()
    cb.on_step_begin(args, _state(1), control)
    cb.on_step_end(args, _state(2), control)
    control.should_save = True  # the trainer's own schedule, decided after the step (save_strategy="epoch")
    cb.on_save(args, _state(2), control)
    cb.on_train_end(args, _state(2), control)
    (save,) = [e for e in events(cb.session) if e.get("kind") == "checkpoint"]
    assert save["reason"] == "the trainer's own save schedule" and save["step"] == 2


BROKEN = """
import sys, warnings
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainerCallback, TrainingArguments)

from engine.callback import rounds_callback

model_dir, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ds = Dataset.from_dict({"text": ["a b c d e f"] * 16}).map(lambda b: tok(b["text"]), batched=True,
                                                           remove_columns=["text"])
args = TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=2, logging_steps=1,
                         report_to="none", save_strategy="no", use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=ds,
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
cb = rounds_callback("disk-full", system_interval=0.3)


class DiskFills(TrainerCallback):  # from step 3 on, every write of the session fails
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 2:
            def full(*a, **k):
                raise OSError(28, "No space left on device")
            cb.writer.event = full


trainer.add_callback(DiskFills())
trainer.add_callback(cb)
out = trainer.train()
print("trained", out.global_step, flush=True)
"""


def test_a_failure_inside_the_callback_never_stops_the_users_training(tmp_path, tiny_model):
    p, root = start(tmp_path, BROKEN, str(tiny_model), str(tmp_path / "out"))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0 and "trained 6" in out, out
    assert out.count("rounds_callback: recording stopped") == 1 and "No space left on device" in out, out
    s = only(root)
    assert [e["step"] for e in events(s) if e["type"] == "metrics"] == [1, 2]  # what it wrote before the disk filled


DDP = """
import sys, time
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainerCallback, TrainingArguments)

from engine.callback import rounds_callback

model_dir, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ds = Dataset.from_dict({"text": ["a b c d e f g"] * 64}).map(lambda b: tok(b["text"]), batched=True,
                                                             remove_columns=["text"])
args = TrainingArguments(output_dir=out, max_steps=400, per_device_train_batch_size=1, logging_steps=1,
                         report_to="none", save_strategy="no", use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=ds,
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))


class Slow(TrainerCallback):
    def on_step_end(self, *a, **k):
        time.sleep(0.2)


trainer.add_callback(Slow())
trainer.add_callback(rounds_callback("two-ranks", system_interval=0.3))
result = trainer.train()
print(f"rank {args.process_index} stopped at step {result.global_step}", flush=True)
"""


def test_a_stop_reaches_every_rank_of_a_multi_process_script(tmp_path, tiny_model):
    """Only rank 0 reads the request; the decision is passed to every rank at the same step, so no
    rank is left waiting in a collective for one that has stopped."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "sessions"
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port), str(script(tmp_path, DDP)), str(tiny_model),
                          str(tmp_path / "out")], cwd=tmp_path, env={**env(root), "OMP_NUM_THREADS": "1"},
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        s = only(root)
        wait_for(lambda: any(e["type"] == "metrics" and e["step"] >= 2 for e in events(s)), timeout=300,
                 what="step 2")
        assert read_session_json(s)["config"]["world_size"] == 2
        request_stop(s, who="the test")
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out
    stops = sorted(line for line in out.splitlines() if " stopped at step " in line)
    assert len(stops) == 2 and stops[0].split()[-1] == stops[1].split()[-1], out  # both ranks, one step
    meta = read_session_json(s)
    assert meta["status"] == "stopped" and int(stops[0].split()[-1]) < 400
    assert len(list_sessions(root)) == 1  # rank 1 made no session of its own
