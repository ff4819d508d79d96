"""Run a training stage inside a session: fit, record, survive the night, resume.

``start()`` (called by ``rounds train``) checks the inputs, creates the session folder
and starts the worker process, ``python -m engine.train SESSION``, which reads its
``TrainSpec`` back from session.json and runs ``run_session()``. ``resume()`` starts
the same worker again; it continues from the newest complete checkpoint.

The worker handles SIGTERM, SIGINT and SIGHUP by finishing the current step, saving a
checkpoint and exiting with status ``stopped``; a second signal stops at once. SIGUSR1
or a ``requests/checkpoint`` file in the session asks for a checkpoint at the next step;
a ``requests/stop`` file asks for a graceful stop. On out-of-memory it halves the
micro-batch (doubling gradient accumulation, so the effective batch is the same) and
resumes from the last checkpoint.

Fault injection for tests: ``ROUNDS_FAULT_OOM_AT_STEP=k`` raises
``torch.OutOfMemoryError`` when step k begins (``ROUNDS_FAULT_OOM_TIMES``, default 1,
says how often); ``ROUNDS_FAULT_CRASH_AT_STEP=k`` raises a ``RuntimeError``;
``ROUNDS_FAULT_STEP_SLEEP=s`` sleeps s seconds in every step (to make runs slow enough
to interrupt).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from engine.errors import UserError
from engine.recipe import TrainSpec, check_adapter_folder, check_model_folder, load_rows
from engine.session import SessionWriter, pid_alive, read_session_json, write_json_atomic
from engine.units import format_duration

COMPLETE = "rounds-complete.json"
REQUESTS = "requests"
RUN_LOG = "run.log"


# --------------------------------------------------------------------------- launching (no weights loaded here;
# the data's token lengths for the plan load the tokenizer, which imports torch)

def choose_plan(spec: TrainSpec, examples: int, budget_bytes: int | None = None, ignore: bool = False,
                lengths: list[int] | None = None) -> dict:
    """Settle the plan before any weight is loaded: ``auto`` takes the planner's
    recommendation; an explicit plan predicted not to fit is refused (unless ``ignore``)
    with the nearest plan that fits. Returns the plan record for session.json."""
    from engine import plan as pl
    from engine.shapes import ModelShape, read_config

    shape = ModelShape.from_config(read_config(spec.model))
    device = pl.detect_device(spec.device, budget_bytes)
    ranks = spec.num_processes if spec.launcher == "accelerate" else 1
    gpus = ranks if device.kind == "cuda" else 1
    if ranks > 1 and device.kind == "cpu":  # the ranks share this machine's RAM
        from dataclasses import replace

        device = replace(device, budget_bytes=device.budget_bytes // ranks,
                         name=f"{device.name}, 1/{ranks} of the RAM for each rank")
    work = pl.Workload(spec.stage, spec.max_length, spec.batch * spec.grad_accum * gpus, examples, spec.epochs,
                       spec.lora_rank, gpus=gpus, shard=_sharding(spec.accelerate_config) if gpus > 1 else "none",
                       lengths=lengths)
    chosen_by = "user"
    if spec.plan == "auto":
        result = pl.plan(shape, work, device)
        if result.recommended is None:
            smallest = min(result.strategies, key=lambda r: r.peak_bytes)
            raise UserError(f"no plan fits {pl.human_bytes(result.usable_bytes)}: the smallest, "
                            f"{smallest.strategy.name}, {smallest.why}",
                            hint="shorten --max-length, or use a device with more memory (`rounds plan` shows all)")
        r = result.recommended
        effective = spec.batch * spec.grad_accum
        spec.plan, spec.precompute_ref = r.strategy.plan, r.strategy.precompute_ref if spec.stage == "dpo" else False
        spec.gradient_checkpointing = r.strategy.gradient_checkpointing
        spec.batch, spec.grad_accum = r.strategy.micro_batch, max(1, -(-effective // r.strategy.micro_batch))
        chosen_by = "auto"
    else:
        r = pl.strategy_result(shape, pl.Strategy(spec.plan, spec.precompute_ref, spec.gradient_checkpointing,
                                                  spec.batch), work, device)
        if not r.fits and not ignore:
            near = pl.nearest_fitting(pl.plan(shape, work, device), r.strategy)
            hint = "pass --ignore-plan to start it anyway"
            if near:
                flags = f"--plan {near.strategy.plan}" + (" --precompute-ref" if near.strategy.precompute_ref else "") \
                    + ("" if near.strategy.gradient_checkpointing else " --no-gradient-checkpointing") \
                    + f" --batch {near.strategy.micro_batch}"
                hint = f"the nearest plan that fits: {near.strategy.name} ({flags}), peak " \
                       f"{pl.human_bytes(near.peak_bytes)}; or pass --ignore-plan to start it anyway"
            raise UserError(f"plan {r.strategy.name} will not fit: {r.why}", field="--plan", hint=hint)
    return {"name": spec.plan, "precompute_ref": spec.precompute_ref,
            "gradient_checkpointing": spec.gradient_checkpointing, "micro_batch": spec.batch,
            "grad_accum": spec.grad_accum, "chosen_by": chosen_by, "fits": r.fits,
            "predicted_peak_bytes": r.peak_bytes, "components": r.components, "moment": r.moment,
            "budget_bytes": device.budget_bytes, "usable_bytes": int(device.budget_bytes * (1 - device.margin)),
            "device": device.kind, "predicted_seconds_per_step": r.seconds_per_step,
            "predicted_total_seconds": r.total_seconds, "planned_for": work.summary().get("lengths") or
            {"longest": spec.max_length, "assumed": "every example --max-length tokens"}}


def _sharding(config: str | None) -> str:
    """none (DDP), fsdp or zero3, from an `accelerate config` file."""
    if not config:
        return "none"
    try:
        import yaml

        data = yaml.safe_load(Path(config).read_text()) or {}
    except Exception:
        return "none"
    kind = str(data.get("distributed_type", "")).upper()
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED" and int((data.get("deepspeed_config") or {}).get("zero_stage", 0) or 0) == 3:
        return "zero3"
    return "none"


def prepare(spec: TrainSpec) -> dict:
    """Everything that can be checked without loading weights; raises ``UserError``."""
    if spec.plan not in ("auto", "full", "lora", "qlora"):
        raise UserError(f"unknown plan {spec.plan!r}", field="--plan", hint="use auto, full, lora or qlora")
    if spec.stage not in ("sft", "dpo"):
        raise UserError(f"unknown stage {spec.stage!r}", hint="use `rounds train sft` or `rounds train dpo`")
    if spec.batch < 1 or spec.grad_accum < 1:
        raise UserError("--batch and --grad-accum must be at least 1")
    if spec.max_length < 8:
        raise UserError("--max-length must be at least 8", field="--max-length")
    config = check_model_folder(spec.model, spec.trust_remote_code)
    if spec.adapter:
        check_adapter_folder(spec.adapter)
    train_rows = load_rows(spec, "data")
    val_rows = load_rows(spec, "val") if spec.val else []
    from engine.data import example_lengths

    return {"model_type": config.get("model_type"), "train_rows": len(train_rows), "val_rows": len(val_rows),
            "lengths": example_lengths(spec.model, train_rows, spec.stage)}


def start(spec: TrainSpec, root: Path, *, name: str | None = None, shared: bool = False, detach: bool = False,
          command: list[str] | None = None, budget_bytes: int | None = None,
          ignore_plan: bool = False, spawn: bool = True) -> tuple[SessionWriter, subprocess.Popen | None]:
    facts = prepare(spec)
    plan_record = choose_plan(spec, facts["train_rows"], budget_bytes, ignore_plan, lengths=facts["lengths"])
    writer = SessionWriter.create(root, "train", name=name, stage=spec.stage, command=command,
                                  config=spec.to_json(), shared=shared)
    writer.update(plan=plan_record,
                  data={"train_rows": facts["train_rows"], "val_rows": facts["val_rows"]},
                  launcher=("detached" if detach else "foreground") if spawn else "user")
    return writer, (spawn_worker(writer.path, detach) if spawn else None)


def spawn_worker(session: Path, detach: bool) -> subprocess.Popen:
    log = open(session / RUN_LOG, "ab", buffering=0)  # noqa: SIM115 - handed to the child
    os.chmod(session / RUN_LOG, 0o600 if not os.stat(session).st_mode & 0o070 else 0o640)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-m", "engine.train", str(session)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=detach, close_fds=True, env=env)
    log.close()
    return proc


def launcher_command(spec: TrainSpec, session: Path) -> list[str]:
    """The command that runs the worker: itself, or `accelerate launch` with one process per rank."""
    if spec.launcher != "accelerate":
        return [sys.executable, "-m", "engine.train", str(session)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if spec.accelerate_config:
        cmd += ["--config_file", spec.accelerate_config]
        if spec.num_processes > 1:
            cmd += ["--num_processes", str(spec.num_processes)]
    else:
        # torchrun-style ranks on one machine; on a CPU the trainer's use_cpu picks the gloo backend
        cmd += ["--multi_gpu", "--num_processes", str(max(1, spec.num_processes)), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + ["-m", "engine.train", "--rank-worker", str(session)]


def _failed_rank(log_tail: str) -> tuple[int | None, str]:
    """The first failed rank and why, from torch.distributed.elastic's failure summary."""
    import re

    block = log_tail[log_tail.rfind("Root Cause"):] if "Root Cause" in log_tail else log_tail
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
    sig = re.search(r"Signal (\d+) \((\w+)\)", block)
    why = (f"killed by {sig.group(2)}" if sig else f"exit code {code.group(1)}" if code else "exited")
    return (int(rank.group(1)) if rank else None), why


OOM_MARK = "oom.json"  # in requests/: a rank ran out of memory and asks for a smaller micro-batch


def supervise(session: Path) -> int:
    """Run a multi-process launch and make sure the session ends with the truth: when a rank
    runs out of memory, relaunch every rank with half the micro-batch (twice the accumulation)
    from the last checkpoint; when a rank dies, the launcher stops the others and the run is
    marked failed, naming the rank."""
    stopping = {"signal": None}
    proc_box: dict = {}

    def forward(signum, frame):  # the launcher passes it on to every rank
        stopping["signal"] = signum
        proc = proc_box.get("proc")
        if proc is not None:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    while True:
        spec = TrainSpec.from_json(read_session_json(session)["config"])
        cmd = launcher_command(spec, session)
        with SessionWriter.reopen(session) as writer:
            writer.update(world_size=spec.num_processes, launcher_command=cmd, supervisor_pid=os.getpid())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROUNDS_WORLD_SIZE": str(spec.num_processes)}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        proc_box["proc"] = proc
        tail: list[str] = []
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            tail = (tail + [raw.decode(errors="replace")])[-400:]
        code = proc.wait()
        status = read_session_json(session).get("status")
        if status == "finished" and code == 0:
            return 0
        if status == "stopped":
            return 0  # the ranks stopped as asked (the launcher may report the signal it got)
        oom = session / REQUESTS / OOM_MARK
        if oom.exists() and stopping["signal"] is None:
            if _relaunch_after_oom(session, oom):
                continue
            return 1
        break
    rank, why = _failed_rank("".join(tail))
    if status == "failed" and rank in (0, None):
        return code or 1  # rank 0 failed and said why itself
    reason = (f"rank {rank} {why}" if rank is not None else f"the launcher exited with code {code}") + \
        "; the other ranks were stopped by the launcher"
    with SessionWriter.reopen(session) as writer:  # rank 0's latest session.json, plus the failure
        writer.event("event", kind="error", message=reason, failed_rank=rank)
        writer.set_status("failed", error=reason, failed_rank=rank)
        writer.update(failed_rank=rank)
    print(f"rounds: run failed: {reason}", flush=True)
    return code or 1


def _relaunch_after_oom(session: Path, mark: Path) -> bool:
    """Halve the micro-batch in the session's config for the next launch; False when it is already 1."""
    import json

    try:
        info = json.loads(mark.read_text())
    except (OSError, ValueError):
        info = {}
    mark.unlink(missing_ok=True)
    with SessionWriter.reopen(session) as writer:
        spec = TrainSpec.from_json(writer.meta["config"])
        if spec.batch == 1:
            msg = f"out of memory on rank {info.get('rank', '?')} at micro-batch 1 ({info.get('error', '')})"
            writer.event("event", kind="error", message=msg, failed_rank=info.get("rank"))
            writer.set_status("failed", error=msg)
            writer.update(failed_rank=info.get("rank"))
            print(f"rounds: error: {msg}\n  hint: {oom_advice(spec)}", flush=True)
            return False
        old = (spec.batch, spec.grad_accum)
        spec.batch, spec.grad_accum = spec.batch // 2, spec.grad_accum * 2
        writer.update(config=spec.to_json(), oom_recoveries=(writer.meta.get("oom_recoveries") or 0) + 1,
                      plan={**(writer.meta.get("plan") or {}), "micro_batch": spec.batch,
                            "grad_accum": spec.grad_accum})
        writer.event("event", kind="oom_recovered", step=info.get("step"), rank=info.get("rank"),
                     error=str(info.get("error", ""))[:300], micro_batch=[old[0], spec.batch],
                     grad_accum=[old[1], spec.grad_accum])
    print(f"rounds: out of memory on rank {info.get('rank', '?')} at step {info.get('step')}; relaunching every "
          f"rank with micro-batch {old[0]} -> {spec.batch}, gradient accumulation {old[1]} -> {spec.grad_accum}",
          flush=True)
    return True


def follow(proc: subprocess.Popen, log_path: Path, out=None) -> int:
    """Show a foreground run's log as it grows until the worker exits. Ctrl-C reaches
    the worker too (same process group): it stops gracefully, and we wait for it."""
    out = out or sys.stdout.buffer
    previous = signal.signal(signal.SIGINT, lambda *a: None)
    pos = 0
    try:
        while True:
            done = proc.poll() is not None
            with open(log_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            if chunk:
                pos += len(chunk)
                try:
                    out.write(chunk)
                    out.flush()
                except (BrokenPipeError, OSError):
                    pass
            if done:
                return proc.returncode
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)


def resume(session: Path, detach: bool = False) -> tuple[SessionWriter, subprocess.Popen]:
    meta = read_session_json(session)
    if meta.get("kind") != "train":
        raise UserError(f"{session} is a {meta.get('kind')} session, not a training run",
                        hint="only training runs resume; `rounds eval` continues by itself")
    status = meta.get("status")
    if status == "running" and meta.get("pid") and pid_alive(meta["pid"]):
        raise UserError(f"{session.name} is still running (pid {meta['pid']})",
                        hint="watch it, or stop it first")
    if status == "finished":
        raise UserError(f"{session.name} finished; there is nothing to resume",
                        hint="start a new run from its outputs (see `outputs` in session.json)")
    writer = SessionWriter.reopen(session)
    writer.event("event", kind="resume_requested", previous_status=status)
    writer.update(launcher="detached" if detach else "foreground")
    return writer, spawn_worker(session, detach)


# --------------------------------------------------------------------------- checkpoints

def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints that were completely written, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def set_aside_incomplete(ckpt_dir: Path, writer: SessionWriter) -> None:
    """A checkpoint without its completion mark was cut off mid-save: never resume from it."""
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and not (p / COMPLETE).is_file():
            target = ckpt_dir / f"incomplete-{p.name}-{int(time.time())}"
            p.rename(target)
            writer.event("event", kind="warning", message=f"checkpoint {p.name} was incomplete; set aside as "
                                                          f"{target.name}")


# --------------------------------------------------------------------------- the worker

class RunControl:
    """Signals and request files, turned into flags the trainer callback acts on."""

    STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, session: Path):
        self.session = session
        self.stop_reason: str | None = None
        self.checkpoint_reason: str | None = None
        self.injected_ooms = 0
        self._stop_signals = 0

    def install(self) -> None:
        for sig in self.STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_checkpoint)

    def _on_stop(self, signum, frame) -> None:
        self._stop_signals += 1
        if self._stop_signals > 1:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.stop_reason = signal.Signals(signum).name

    def _on_checkpoint(self, signum, frame) -> None:
        self.checkpoint_reason = "SIGUSR1"

    def poll_requests(self) -> None:
        req = self.session / REQUESTS
        if (req / "stop").exists() and not self.stop_reason:
            self.stop_reason = "stop requested"
        if (req / "checkpoint").exists() and not self.checkpoint_reason:
            self.checkpoint_reason = "checkpoint requested"

    def clear_checkpoint_request(self) -> None:
        self.checkpoint_reason = None
        try:
            (self.session / REQUESTS / "checkpoint").unlink()
        except FileNotFoundError:
            pass

    def clear_stop_request(self) -> None:
        try:
            (self.session / REQUESTS / "stop").unlink()
        except FileNotFoundError:
            pass


def _control_callback(writer: SessionWriter, control: RunControl, spec: TrainSpec):
    import torch
    from transformers import TrainerCallback

    oom_at = int(os.environ.get("ROUNDS_FAULT_OOM_AT_STEP", "0") or 0)
    oom_times = int(os.environ.get("ROUNDS_FAULT_OOM_TIMES", "1") or 1)
    crash_at = int(os.environ.get("ROUNDS_FAULT_CRASH_AT_STEP", "0") or 0)
    step_sleep = float(os.environ.get("ROUNDS_FAULT_STEP_SLEEP", "0") or 0)

    rank, world = _rank()
    control.injected_ooms = max(control.injected_ooms, writer.meta.get("oom_recoveries") or 0)

    class ControlCallback(TrainerCallback):
        def __init__(self):
            self.last_save = time.monotonic()
            self.save_started: float | None = None
            self.save_reason = "every --save-steps"

        def on_step_begin(self, args, state, control_, **kwargs):
            step = state.global_step + 1
            if oom_at and step == oom_at and control.injected_ooms < oom_times:
                control.injected_ooms += 1
                raise torch.OutOfMemoryError(f"injected by ROUNDS_FAULT_OOM_AT_STEP={oom_at} "
                                             f"({control.injected_ooms}/{oom_times})")
            if crash_at and step == crash_at:
                raise RuntimeError(f"injected by ROUNDS_FAULT_CRASH_AT_STEP={crash_at}")
            if step_sleep:
                time.sleep(step_sleep)

        def on_step_end(self, args, state, control_, **kwargs):
            control.poll_requests()
            if world > 1:  # every rank stops (or saves) at the same step, whichever rank was asked
                if _all_ranks_agree(bool(control.stop_reason)) and not control.stop_reason:
                    control.stop_reason = "another rank was asked to stop"
                if _all_ranks_agree(bool(control.checkpoint_reason)) and not control.checkpoint_reason:
                    control.checkpoint_reason = "another rank asked for a checkpoint"
            if control.stop_reason:
                control_.should_save = True
                control_.should_training_stop = True
                self.save_reason = f"stopping ({control.stop_reason})"
            elif control.checkpoint_reason:
                control_.should_save = True
                self.save_reason = control.checkpoint_reason
            elif time.monotonic() - self.last_save >= spec.save_minutes * 60:
                control_.should_save = True
                self.save_reason = f"every --save-minutes {spec.save_minutes:g}"
            if control_.should_save:
                self.save_started = time.monotonic()

        def on_save(self, args, state, control_, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            took = time.monotonic() - (self.save_started or time.monotonic())
            _barrier()  # every rank's part of the checkpoint is written before it is called complete
            if rank == 0:
                write_json_atomic(ckpt / COMPLETE, {"step": state.global_step, "time": time.time(),
                                                    "seconds": round(took, 3), "reason": self.save_reason,
                                                    **({"world_size": world} if world > 1 else {})})
            writer.event("event", kind="checkpoint", path=str(ckpt), step=state.global_step,
                         seconds=round(took, 3), reason=self.save_reason)
            self.last_save = time.monotonic()
            self.save_reason = "every --save-steps"
            control.clear_checkpoint_request()

    return ControlCallback()


def _echo(record: dict) -> None:
    parts = [f"step {record['step']}/{record['max_steps']}"]
    if isinstance(record.get("loss"), (int, float)):
        parts.append(f"loss {record['loss']:.4f}")
    if isinstance(record.get("rewards/margins"), (int, float)):
        parts.append(f"margin {record['rewards/margins']:.3f}")
        parts.append(f"acc {record.get('rewards/accuracies', 0):.2f}")
    if record.get("seconds_per_step"):
        parts.append(f"{record['seconds_per_step']:.2f} s/step")
    parts.append(f"ETA {format_duration(record.get('eta_seconds'))}")
    print("  ".join(parts), flush=True)


def _quiet_libraries() -> None:
    """run.log is for people: keep the libraries' progress bars and deprecation chatter out."""
    import logging
    import warnings

    # bitsandbytes tries to fetch a CPU kernel from the Hub (never reachable here) and says so.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # bitsandbytes' gemv_4bit (used where no gradient is needed) has no autograd kernel and
    # torch warns when a graph passes it; QLoRA gradients on CPU equal those of the dequantized
    # model (tests/test_train.py::test_qlora_gradients_match_the_dequantized_model).
    warnings.filterwarnings("ignore", message=".*autograd kernel was not registered.*")
    # Long passes (TRL's reference log-prob precompute) keep their progress bar, at a calm rate.
    os.environ.setdefault("TQDM_MININTERVAL", "10")
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def oom_advice(spec: TrainSpec) -> str:
    options = []
    if spec.plan != "qlora":
        options.append("--plan qlora (4-bit base weights)")
    if spec.stage == "dpo" and not spec.precompute_ref:
        options.append("--precompute-ref (no reference forward while training)")
    if not spec.gradient_checkpointing:
        options.append("gradient checkpointing (drop --no-gradient-checkpointing)")
    options.append(f"a shorter --max-length (now {spec.max_length})")
    return "options that lower memory: " + "; ".join(options)


def _data_event(writer: SessionWriter, spec: TrainSpec, tokenizer, rows: list[dict], val_rows: list[dict] | None
                ) -> None:
    """Row counts and token lengths; warn when examples will be cut by --max-length."""
    from engine.data import DataReport, token_stats

    report = DataReport(file=spec.data, kind=spec.stage, rows=rows)
    stats = token_stats(report, tokenizer, spec.max_length)
    writer.event("event", kind="data", train_rows=len(rows), val_rows=len(val_rows or []), tokens=stats)
    over = stats.get("total", {}).get("over_max_length", 0)
    if over:
        writer.event("event", kind="warning",
                     message=f"{over} of {len(rows)} training examples are longer than --max-length "
                             f"{spec.max_length} tokens (longest {stats['total']['max']}): TRL cuts them, and drops "
                             f"any whose answer is cut away entirely")


class _FollowerWriter:
    """What a rank other than 0 may write: its own ``system`` records. Everything else (metrics,
    events, session.json) is rank 0's, so the session tells one story."""

    def __init__(self, inner: SessionWriter, rank: int):
        self.inner, self.rank = inner, rank
        self.path, self.meta = inner.path, inner.meta

    def event(self, type: str, **fields) -> dict:
        if type == "system" or (type == "event" and fields.get("kind") == "error"):
            return self.inner.event(type, **{"rank": self.rank, **fields})
        return {}

    def update(self, **fields) -> None:
        pass

    def set_status(self, status: str, **fields) -> None:
        pass

    def close(self) -> None:
        self.inner.close()


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def _all_ranks_agree(flag: bool) -> bool:
    """True on every rank when it is true on any (so that all stop or save at the same step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def run_session(session: Path) -> int:
    """The worker: run (or continue) the training described in ``session``. Under a multi-process
    launch every rank runs this; rank 0 writes the session, the others only their system records."""
    rank, world = _rank()
    lead = rank == 0
    writer = SessionWriter.reopen(session) if lead else _FollowerWriter(SessionWriter.reopen(session), rank)
    spec = TrainSpec.from_json(writer.meta["config"])
    control = RunControl(session)
    control.install()
    if lead:
        control.clear_stop_request()  # a stale request from an earlier stop must not end this run
    writer.update(pid=os.getpid(), **({"world_size": world} if world > 1 else {}))
    say = print if lead else (lambda *a, **k: None)
    sampler = None
    ckpt_dir = session / "checkpoints"
    try:
        _quiet_libraries()
        from engine.probe import SystemSampler
        from engine.recipe import build_trainer, load_tokenizer, resolve_runtime, save_outputs
        from engine.telemetry import TelemetryCallback

        rt = resolve_runtime(spec)
        writer.update(runtime=asdict(rt))
        for note in rt.notes:
            writer.event("event", kind="warning", message=note)
        predicted = (writer.meta.get("plan") or {}).get("predicted_peak_bytes")
        writer.event("event", kind="plan", plan=spec.plan, device=rt.device, bf16=rt.bf16, optimizer=rt.optimizer,
                     predicted_peak_bytes=predicted, chosen_by=(writer.meta.get("plan") or {}).get("chosen_by"),
                     micro_batch=spec.batch, grad_accum=spec.grad_accum, precompute_ref=spec.precompute_ref,
                     gradient_checkpointing=spec.gradient_checkpointing, max_length=spec.max_length)
        sampler = SystemSampler(writer, spec.system_interval,
                                extra={"rank": rank, "world_size": world} if world > 1 else None).start()
        tokenizer = load_tokenizer(spec)
        rows = (load_rows(spec, "data"), load_rows(spec, "val") if spec.val else None)  # read once, used on retries
        _data_event(writer, spec, tokenizer, *rows)
        say(f"rounds: {spec.stage} on {rt.device}, plan {spec.plan}, micro-batch {spec.batch} x {spec.grad_accum}"
            + (f" x {world} ranks" if world > 1 else ""), flush=True)

        telemetry = None
        trainer = None
        while True:
            if lead:
                set_aside_incomplete(ckpt_dir, writer)
            done = complete_checkpoints(ckpt_dir)
            resume_from = str(done[-1]) if done else None
            telemetry = TelemetryCallback(writer, samples_per_step=spec.batch * spec.grad_accum * world, echo=_echo)
            writer.event("event", kind="loading", message=f"loading {spec.model}"
                         + (f" + adapter {spec.adapter}" if spec.adapter else ""))
            callbacks = [telemetry] if lead else []
            trainer = build_trainer(spec, rt, ckpt_dir, callbacks + [_control_callback(writer, control, spec)],
                                    tokenizer, rows)
            if writer.meta.get("status") != "running":
                writer.set_status("running")
            if resume_from:
                writer.event("event", kind="resumed", checkpoint=resume_from)
                say(f"rounds: resuming from {resume_from}", flush=True)
            if control.stop_reason:
                break
            try:
                trainer.train(resume_from_checkpoint=resume_from)
                break
            except Exception as e:
                if not _is_oom(e):
                    raise
                if world > 1:  # the other ranks are inside a collective: the supervisor relaunches them all
                    (session / REQUESTS).mkdir(exist_ok=True)
                    write_json_atomic(session / REQUESTS / OOM_MARK,
                                      {"rank": rank, "step": trainer.state.global_step, "error": str(e)[:300]})
                    print(f"rounds: rank {rank} ran out of memory at step {trainer.state.global_step}; "
                          "asking the supervisor for a smaller micro-batch", flush=True)
                    os._exit(75)  # now: the other ranks wait in a collective that will never complete
                if spec.batch == 1:
                    raise UserError(f"out of memory at micro-batch 1 ({e})", hint=oom_advice(spec)) from None
                old = (spec.batch, spec.grad_accum)
                spec.batch, spec.grad_accum = spec.batch // 2, spec.grad_accum * 2
                step = trainer.state.global_step
                trainer = None
                _free_memory()
                writer.update(config=spec.to_json(),
                              plan={**(writer.meta.get("plan") or {}), "micro_batch": spec.batch,
                                    "grad_accum": spec.grad_accum})
                writer.event("event", kind="oom_recovered", step=step, error=str(e)[:300],
                             micro_batch=[old[0], spec.batch], grad_accum=[old[1], spec.grad_accum])
                print(f"rounds: out of memory at step {step}; micro-batch {old[0]} -> {spec.batch}, "
                      f"gradient accumulation {old[1]} -> {spec.grad_accum}", flush=True)

        if control.stop_reason:
            control.clear_stop_request()
            writer.event("event", kind="stopped", reason=control.stop_reason, step=trainer.state.global_step)
            writer.set_status("stopped", reason=control.stop_reason)
            say(f"rounds: stopped ({control.stop_reason}) at step {trainer.state.global_step}; "
                f"resume with `rounds resume {session.name}`", flush=True)
            return 0
        outputs = save_outputs(trainer, spec, rt, session, tokenizer, lead=lead)  # every rank: FSDP gathers
        if not lead:
            return 0
        writer.update(outputs=outputs)
        writer.event("event", kind="finished", step=trainer.state.global_step, outputs=outputs,
                     **(telemetry.final if telemetry else {}))
        writer.set_status("finished")
        print(f"rounds: finished at step {trainer.state.global_step}; outputs: "
              + ", ".join(f"{k} {v}" for k, v in outputs.items()), flush=True)
        return 0
    except KeyboardInterrupt as e:
        writer.event("event", kind="stopped", reason=f"{e}: stopped at once, no checkpoint")
        writer.set_status("stopped", reason=f"{e}: stopped at once, no checkpoint")
        print(f"rounds: {e}: stopped at once without a checkpoint", flush=True)
        return 130
    except UserError as e:
        writer.event("event", kind="error", message=str(e))
        writer.set_status("failed", error=e.message)
        print(f"rounds: error: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        traceback.print_exc()
        sys.stderr.flush()
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        writer.event("event", kind="error", message=reason)
        writer.set_status("failed", error=reason)
        return 1
    finally:
        if sampler:
            sampler.stop()
        writer.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank_worker = bool(argv) and argv[0] == "--rank-worker"
    argv = argv[1:] if rank_worker else argv
    if len(argv) != 1:
        print("usage: python -m engine.train SESSION_DIR", file=sys.stderr)
        return 2
    session = Path(argv[0])
    if not (session / "session.json").is_file():
        print(f"engine.train: {session}: not a session folder", file=sys.stderr)
        return 2
    spec = TrainSpec.from_json(read_session_json(session)["config"])
    if spec.launcher == "accelerate" and not rank_worker and "RANK" not in os.environ:
        return supervise(session)
    return run_session(session)


if __name__ == "__main__":
    sys.exit(main())

