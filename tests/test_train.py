"""Training engine: real SFT and DPO runs of the tiny model on CPU, through `rounds train`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_rounds, wait_for
from engine.session import EventTail, list_sessions, read_session_json

DEMO = ROOT / "engine" / "demo_data"


def only_session(root: Path) -> Path:
    sessions = [p for p in root.iterdir() if (p / "session.json").is_file()]
    assert len(sessions) == 1, sessions
    return sessions[0]


def events(session: Path) -> list[dict]:
    return list(EventTail(session / "events.jsonl"))


def kinds(session: Path) -> list[str]:
    return [e.get("kind") for e in events(session) if e["type"] == "event"]


def metrics(session: Path) -> list[dict]:
    return [e for e in events(session) if e["type"] == "metrics"]


def train(tmp_path: Path, stage: str, *args: str, env: dict | None = None, model: Path, data: Path | None = None):
    data = data or DEMO / ("sft_train.jsonl" if stage == "sft" else "dpo_train.jsonl")
    root = tmp_path / "sessions"
    plan = () if "--plan" in args else ("--plan", "lora")  # explicit, so the tests don't depend on the planner
    r = run_rounds("--sessions", str(root), "train", stage, "--model", str(model), "--data", str(data),
                   "--system-interval", "0.5", *plan, *args, env=env, timeout=300)
    return r, root


@pytest.fixture(scope="module")
def tiny_sft(tiny_model, tmp_path_factory) -> Path:
    """A finished LoRA SFT session with an adapter and a merged model (used by DPO tests)."""
    tmp = tmp_path_factory.mktemp("sft")
    r, root = train(tmp, "sft", "--max-steps", "4", "--batch", "4", "--merge", "--save-steps", "2",
                    model=tiny_model)
    assert r.returncode == 0, r.stdout + r.stderr
    return only_session(root)


# --------------------------------------------------------------------------- plans


def test_sft_lora_records_everything_and_writes_outputs(tiny_sft):
    meta = read_session_json(tiny_sft)
    assert meta["status"] == "finished" and meta["kind"] == "train" and meta["stage"] == "sft"
    assert set(meta["outputs"]) == {"adapter", "merged"}
    # a CPU run's C heap keeps freed memory for reuse (engine.heap), unless ROUNDS_MALLOC=system
    from engine import heap

    expected = heap.REUSE if heap._mallopt() and os.environ.get("ROUNDS_MALLOC", "") != "system" else heap.SYSTEM
    assert meta["runtime"]["device"] == "cpu" and meta["runtime"]["allocator"] == expected
    assert (tiny_sft / "adapter" / "adapter_model.safetensors").is_file()
    assert (tiny_sft / "merged" / "model.safetensors").is_file()
    assert (tiny_sft / "merged" / "tokenizer.json").is_file()
    # issue #17 item 11: what the libraries write inside a private session is private too
    for sub in ("adapter", "merged", "checkpoints"):
        assert (tiny_sft / sub).stat().st_mode & 0o777 == 0o700, sub
    assert (tiny_sft / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o600
    ms = metrics(tiny_sft)
    assert [m["step"] for m in ms] == [1, 2, 3, 4] and all(m["max_steps"] == 4 for m in ms)
    for key in ("loss", "grad_norm", "learning_rate", "epoch", "num_tokens"):
        assert all(key in m for m in ms), key
    for key in ("seconds_per_step", "samples_per_second", "eta_seconds", "tokens_per_second"):
        assert key in ms[-1], key
    ks = kinds(tiny_sft)
    for k in ("plan", "data", "checkpoint", "finished"):
        assert k in ks, k
    system = [e for e in events(tiny_sft) if e["type"] == "system"]
    assert system and system[0]["gpus"] == [] and system[0]["process"]["rss"] > 0
    assert system[0]["host"]["ram_total"] > 0
    log = (tiny_sft / "run.log").read_text()
    assert "step 4/4" in log and "finished at step 4" in log
    assert "Traceback" not in log and "{'loss'" not in log


@pytest.mark.parametrize("plan", ["full", "qlora"])
def test_sft_other_plans(tmp_path, tiny_model, plan):
    r, root = train(tmp_path, "sft", "--plan", plan, "--max-steps", "2", "--batch", "2", model=tiny_model)
    assert r.returncode == 0, r.stdout + r.stderr
    s = only_session(root)
    meta = read_session_json(s)
    assert meta["status"] == "finished"
    assert "model" in meta["outputs"] if plan == "full" else "adapter" in meta["outputs"]
    assert len(metrics(s)) == 2


@pytest.mark.parametrize("plan,precompute", [("full", False), ("full", True), ("lora", False), ("lora", True),
                                             ("qlora", False), ("qlora", True)])
def test_dpo_every_plan(tmp_path, tiny_sft, plan, precompute):
    args = ["--plan", plan, "--max-steps", "2", "--batch", "2"] + (["--precompute-ref"] if precompute else [])
    r, root = train(tmp_path, "dpo", *args, model=tiny_sft / "merged")
    assert r.returncode == 0, r.stdout + r.stderr
    s = only_session(root)
    assert read_session_json(s)["status"] == "finished"
    ms = metrics(s)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "logits/chosen", "grad_norm", "learning_rate"):
        assert key in ms[-1], key
    plan_event = next(e for e in events(s) if e.get("kind") == "plan")
    assert plan_event["plan"] == plan and plan_event["precompute_ref"] is precompute
    # the reference pass before the first step is a phase of its own, with its progress (the Monitor shows it)
    phases = [e for e in events(s) if e["type"] == "progress" and e.get("prestep")]
    if precompute:
        first_step = next(i for i, e in enumerate(events(s)) if e["type"] == "metrics")
        assert phases and phases[-1]["step"] == phases[-1]["max_steps"] and phases[-1]["unit"] == "batches"
        assert "reference log-probs" in phases[0]["phase"]
        assert all(events(s).index(p) < first_step for p in phases)
        assert list_sessions(s.parent)[0].progress == 1.0  # Home's progress is the training's, not the phase's
    else:
        assert not phases


def test_dpo_from_base_plus_sft_adapter(tmp_path, tiny_model, tiny_sft):
    r, root = train(tmp_path, "dpo", "--adapter", str(tiny_sft / "adapter"), "--max-steps", "2", "--merge",
                    model=tiny_model)
    assert r.returncode == 0, r.stdout + r.stderr
    s = only_session(root)
    meta = read_session_json(s)
    assert meta["status"] == "finished" and {"adapter", "merged"} <= set(meta["outputs"])
    # TRL's frozen "ref" copy of the SFT adapter is the reference, not an output
    assert not (s / "adapter" / "ref").exists()


def test_dpo_reward_margin_rises_on_an_overfit_set(tmp_path, tiny_sft):
    pairs = tmp_path / "four.jsonl"
    rows = [json.loads(x) for x in (DEMO / "dpo_train.jsonl").read_text().splitlines()[:4]]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r, root = train(tmp_path, "dpo", "--max-steps", "24", "--batch", "4", "--lr", "5e-3", "--beta", "0.5",
                    model=tiny_sft / "merged", data=pairs)
    assert r.returncode == 0, r.stdout + r.stderr
    margins = [m["rewards/margins"] for m in metrics(only_session(root))]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    assert sum(margins[-4:]) / 4 > 1.0, margins
    assert metrics(only_session(root))[-1]["rewards/accuracies"] == 1.0


@pytest.mark.parametrize("after_eval_pass", [False, True])
def test_qlora_gradients_match_the_dequantized_model(tiny_model, after_eval_pass):
    """bitsandbytes 4-bit on CPU: LoRA gradients through NF4 layers equal those through the same
    weights dequantized to fp32 (so QLoRA trains correctly on CPU, warnings or not) — also after an
    eval-mode forward such as DPO's precomputed reference log-probs, which on an AVX512-BF16 CPU
    would otherwise repack the weights into an inference layout that carries no gradient."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.recipe import Runtime, TrainSpec, _load_base

    spec = TrainSpec(stage="dpo", model=str(tiny_model), data="-", plan="qlora", device="cpu")
    quant = _load_base(spec, Runtime("cpu", False, "adamw_torch", []), quantize=True)
    dense = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for name, mod in quant.named_modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                dense.get_submodule(name).weight.copy_(
                    bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float())
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(1)
    pq = get_peft_model(quant, cfg)
    torch.manual_seed(1)
    pd = get_peft_model(dense, cfg)
    ids = torch.randint(10, 1000, (2, 12))
    if after_eval_pass:
        pq.eval()
        with torch.no_grad():
            pq(input_ids=ids)
        assert not any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)
                       for m in pq.modules() if isinstance(m, bnb.nn.Linear4bit))
    for m in (pq, pd):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.enable_input_require_grads()
        m.train()
        m(input_ids=ids, labels=ids).loss.backward()
    for layer in (0, 3):
        gq = pq.base_model.model.model.layers[layer].self_attn.q_proj.lora_A.default.weight.grad
        gd = pd.base_model.model.model.layers[layer].self_attn.q_proj.lora_A.default.weight.grad
        assert gd.norm() > 0
        assert torch.allclose(gq, gd, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- surviving the night


def _start_slow_detached(tmp_path, model, *extra, env_extra=None, steps=12):
    root = tmp_path / "sessions"
    env = {"ROUNDS_FAULT_STEP_SLEEP": "0.4", **(env_extra or {})}
    r = run_rounds("--sessions", str(root), "train", "sft", "--model", str(model), "--data",
                   str(DEMO / "sft_train.jsonl"), "--plan", "lora", "--max-steps", str(steps), "--batch", "2",
                   "--save-steps", "100",
                   "--system-interval", "0.5", "--detach", "--name", "night", *extra, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rounds: started session" in r.stdout and "rounds resume" in r.stdout
    return only_session(root)


def _pid_of(session: Path) -> int:
    def running():
        meta = read_session_json(session)
        return meta["pid"] if meta["status"] == "running" else None

    return wait_for(running, what="the run to start")


def _wait_status(session: Path, statuses=("finished", "stopped", "failed"), timeout=180) -> str:
    return wait_for(lambda: read_session_json(session)["status"] in statuses and read_session_json(session)["status"],
                    timeout=timeout, what=f"status in {statuses}")


def _wait_step(session: Path, step: int):
    wait_for(lambda: any(m["step"] >= step for m in metrics(session)), what=f"step {step}")


def test_sigterm_checkpoints_and_stops_then_resume_continues_the_loss(tmp_path, tiny_model):
    # The reference: the same run without interruption.
    r, ref_root = train(tmp_path / "ref", "sft", "--max-steps", "12", "--batch", "2", "--save-steps", "100",
                        "--name", "night", model=tiny_model)
    assert r.returncode == 0, r.stdout + r.stderr
    ref_loss = {m["step"]: m["loss"] for m in metrics(only_session(ref_root))}

    s = _start_slow_detached(tmp_path, tiny_model)
    pid = _pid_of(s)
    _wait_step(s, 3)
    os.kill(pid, signal.SIGTERM)
    assert _wait_status(s) == "stopped"
    meta = read_session_json(s)
    stopped_at = max(m["step"] for m in metrics(s))
    assert 3 <= stopped_at < 12
    ckpts = [e for e in events(s) if e.get("kind") == "checkpoint"]
    assert ckpts and ckpts[-1]["step"] == stopped_at and "SIGTERM" in ckpts[-1]["reason"]
    assert (s / "checkpoints" / f"checkpoint-{stopped_at}" / "rounds-complete.json").is_file()
    assert meta["reason"] == "SIGTERM"

    r = run_rounds("--sessions", str(s.parent), "resume", s.name)  # foreground: follows to the end
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming from {s / 'checkpoints' / f'checkpoint-{stopped_at}'}" in r.stdout
    # what it prints is the resumed run: not the log from step 1 again (it read like a restart)
    assert "step 1/12 " not in r.stdout and f"step {stopped_at + 1}/12 " in r.stdout, r.stdout
    assert "the run's log so far is in" in r.stdout
    assert read_session_json(s)["status"] == "finished"
    ms = metrics(s)
    steps = [m["step"] for m in ms]
    assert steps == list(range(1, 13))  # one events file, every step once, no restart from 1
    for m in ms:  # the resumed curve continues the original one
        assert m["loss"] == pytest.approx(ref_loss[m["step"]], rel=1e-4), m["step"]
    assert "resumed" in kinds(s)


def test_checkpoint_request_file_and_sigusr1(tmp_path, tiny_model):
    s = _start_slow_detached(tmp_path, tiny_model, steps=30)
    pid = _pid_of(s)
    _wait_step(s, 2)
    (s / "requests").mkdir(exist_ok=True)
    (s / "requests" / "checkpoint").write_text("")
    wait_for(lambda: any(e.get("reason") == "checkpoint requested" for e in events(s)), what="requested checkpoint")
    assert not (s / "requests" / "checkpoint").exists()
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: any(e.get("reason") == "SIGUSR1" for e in events(s)), what="SIGUSR1 checkpoint")
    assert read_session_json(s)["status"] == "running"  # a checkpoint is not a stop
    (s / "requests" / "stop").write_text("")
    assert _wait_status(s) == "stopped"
    assert read_session_json(s)["reason"] == "stop requested"


def test_detached_run_survives_the_hangup_of_its_shell(tmp_path, tiny_model):
    root = tmp_path / "sessions"
    cmd = (f"{sys.executable} -m console.cli --sessions {root} train sft --model {tiny_model} "
           f"--data {DEMO / 'sft_train.jsonl'} --plan lora --max-steps 10 --batch 2 --detach; sleep 60")
    env = {**os.environ, "ROUNDS_FAULT_STEP_SLEEP": "0.3"}
    # a shell as a terminal's: SIGHUP ends it, even when the suite itself runs under nohup (SIG_IGN is inherited)
    shell = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        s = wait_for(lambda: root.is_dir() and next((p for p in root.iterdir() if (p / "session.json").exists()), None),
                     what="the session folder and its session.json")
        pid = _pid_of(s)
        os.killpg(shell.pid, signal.SIGHUP)  # the terminal goes away
        shell.wait(timeout=120)  # a generous ceiling: the shell ends at once on the hang-up
        assert _wait_status(s) == "finished"
        assert read_session_json(s)["pid"] == pid
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)


def test_injected_oom_halves_the_micro_batch_and_finishes(tmp_path, tiny_model):
    r, root = train(tmp_path, "sft", "--max-steps", "6", "--batch", "4", "--grad-accum", "1", "--save-steps", "2",
                    model=tiny_model, env={"ROUNDS_FAULT_OOM_AT_STEP": "4"})
    assert r.returncode == 0, r.stdout + r.stderr
    s = only_session(root)
    meta = read_session_json(s)
    assert meta["status"] == "finished"
    assert (meta["config"]["batch"], meta["config"]["grad_accum"]) == (2, 2)
    oom = next(e for e in events(s) if e.get("kind") == "oom_recovered")
    assert oom["micro_batch"] == [4, 2] and oom["grad_accum"] == [1, 2] and "injected" in oom["error"]
    assert oom["step"] == 4 and "out of memory at step 4" in r.stdout  # the step that ran out (issue #17 item 11)
    # OOM as step 4 began; the last checkpoint was step 2, so step 3 is done again at the new batch size
    assert [m["step"] for m in metrics(s)] == [1, 2, 3, 3, 4, 5, 6]
    resumed = [e for e in events(s) if e.get("kind") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"].endswith("checkpoint-2")
    assert "out of memory at step" in r.stdout


def test_oom_at_micro_batch_one_fails_with_advice(tmp_path, tiny_model):
    r, root = train(tmp_path, "dpo", "--max-steps", "4", "--batch", "2", "--plan", "lora", model=tiny_model,
                    env={"ROUNDS_FAULT_OOM_AT_STEP": "1", "ROUNDS_FAULT_OOM_TIMES": "9"})
    assert r.returncode == 1
    meta = read_session_json(only_session(root))
    assert meta["status"] == "failed" and "out of memory at micro-batch 1" in meta["error"]
    assert "--plan qlora" in r.stdout and "--precompute-ref" in r.stdout  # the worker's log, followed
    assert r.stderr.startswith("rounds: error: run ") and "out of memory at micro-batch 1" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_crash_marks_failed_with_traceback_in_run_log(tmp_path, tiny_model):
    r, root = train(tmp_path, "sft", "--max-steps", "4", model=tiny_model, env={"ROUNDS_FAULT_CRASH_AT_STEP": "2"})
    assert r.returncode == 1
    s = only_session(root)
    meta = read_session_json(s)
    assert meta["status"] == "failed" and "injected by ROUNDS_FAULT_CRASH_AT_STEP" in meta["error"]
    assert "Traceback" in (s / "run.log").read_text()
    err = next(e for e in events(s) if e.get("kind") == "error")
    assert "RuntimeError" in err["message"]


def test_incomplete_checkpoint_is_set_aside_on_resume(tmp_path, tiny_model):
    s = _start_slow_detached(tmp_path, tiny_model, "--save-steps", "2", steps=6)
    pid = _pid_of(s)
    _wait_step(s, 3)
    os.kill(pid, signal.SIGTERM)
    assert _wait_status(s) == "stopped"
    last = max(int(p.name.split("-")[1]) for p in (s / "checkpoints").glob("checkpoint-*"))
    half = s / "checkpoints" / f"checkpoint-{last + 50}"  # a save cut off by a power failure
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    r = run_rounds("--sessions", str(s.parent), "resume", s.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming from {s / 'checkpoints' / f'checkpoint-{last}'}" in r.stdout
    assert not half.exists() and list((s / "checkpoints").glob("incomplete-checkpoint-*"))
    assert read_session_json(s)["status"] == "finished"


def test_resume_refuses_finished_and_unknown_sessions(tmp_path, tiny_sft):
    r = run_rounds("--sessions", str(tiny_sft.parent), "resume", tiny_sft.name)
    assert r.returncode == 1 and "nothing to resume" in r.stderr
    r = run_rounds("--sessions", str(tmp_path), "resume", "no-such-session")
    assert r.returncode == 1 and "no session 'no-such-session'" in r.stderr


# --------------------------------------------------------------------------- bad input


def test_bad_data_is_refused_before_any_session_or_checkpoint(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": ""}\n')
    r, root = train(tmp_path, "sft", model=tiny_model, data=bad)
    assert r.returncode == 1
    assert f"{bad}, line 2, field 'answer': error: is empty" in r.stderr
    assert not root.exists() or not any(root.iterdir())


def test_model_folder_problems_are_clear(tmp_path, tiny_model):
    r, _ = train(tmp_path, "sft", model=tmp_path / "missing")
    assert r.returncode == 1 and "not a folder" in r.stderr
    binonly = tmp_path / "binonly"
    binonly.mkdir()
    (binonly / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (binonly / "pytorch_model.bin").write_bytes(b"x")
    r, _ = train(tmp_path, "sft", model=binonly)
    assert r.returncode == 1 and "no *.safetensors" in r.stderr and "safetensors only" in r.stderr
    assert "Traceback" not in r.stderr


def test_damaged_model_folders_are_refused_before_any_session(tmp_path, tiny_model):
    """Issue #17 item 8: weights that are not safetensors, a copy cut short, or a model_type transformers
    does not know used to get past the checks and leave a failed session."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = (tiny_model / "model.safetensors").read_bytes()
    config = json.loads((tiny_model / "config.json").read_text())
    cases = [(b"not a safetensors file", config, "not a safetensors file"),
             (weights[: len(weights) // 2], config, "is cut short"),
             (weights, {**config, "model_type": "llamma"}, "model_type 'llamma' is not an architecture")]
    for data, cfg, message in cases:
        (broken / "model.safetensors").write_bytes(data)
        (broken / "config.json").write_text(json.dumps(cfg))
        r, root = train(tmp_path, "sft", "--max-steps", "2", model=broken)
        assert r.returncode == 1 and message in r.stderr, (message, r.stderr)
        assert "Traceback" not in r.stderr
        assert not root.exists() or not any(root.iterdir())  # no session for a bad input


def test_sft_weight_adds_an_nll_term_to_dpo():
    from engine.recipe import TrainSpec, resolve_runtime, trainer_config

    spec = TrainSpec(stage="dpo", model="m", data="d", plan="lora", options={"sft_weight": 0.5}, device="cpu")
    cfg = trainer_config(spec, resolve_runtime(spec), Path("/tmp/x"), has_eval=False)
    assert cfg.loss_type == ["sigmoid", "sft"] and cfg.loss_weights == [1.0, 0.5]
    plain = trainer_config(TrainSpec(stage="dpo", model="m", data="d", plan="lora", device="cpu"),
                           resolve_runtime(spec), Path("/tmp/x"), has_eval=False)
    assert plain.loss_type == ["sigmoid"]
