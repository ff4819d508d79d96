"""The training worker: ``python -m engine.run.worker SESSION`` reads its ``TrainSpec`` back from
session.json and trains (under ``--launcher accelerate`` it becomes the supervisor of the
ranks instead, each of which runs ``python -m engine.run.rank SESSION``). It continues from the
newest complete checkpoint, so resuming is starting it again.

It handles SIGTERM, SIGINT and SIGHUP by finishing the current step, saving a checkpoint and
exiting with status ``stopped``; a second signal stops at once. SIGUSR1 or a
``requests/checkpoint`` file asks for a checkpoint at the next step; a ``requests/stop`` file
asks for a graceful stop (``engine.session.requests``). On out-of-memory it halves the
micro-batch (doubling gradient accumulation, so the effective batch is the same) and resumes
from the last checkpoint.

Fault injection for tests: ``ROUNDS_FAULT_OOM_AT_STEP=k`` raises
``torch.OutOfMemoryError`` when step k begins (``ROUNDS_FAULT_OOM_TIMES``, default 1,
says how often); ``ROUNDS_FAULT_CRASH_AT_STEP=k`` raises a ``RuntimeError``;
``ROUNDS_FAULT_STEP_SLEEP=s`` sleeps s seconds in every step (to make runs slow enough
to interrupt).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from engine.errors import UserError
from engine.recipe import TrainSpec, load_rows
from engine.run.common import complete_checkpoints, halve_micro_batch, oom_advice, set_aside_incomplete
from engine.session import SessionWriter, follow_folder_mode, read_session_json, run_lock, write_json_atomic
from engine.session import requests as session_requests
from engine.session.layout import (
    CHECKPOINT,
    CHECKPOINT_COMPLETE,
    CHECKPOINT_REQUEST,
    CHECKPOINTS,
    DATA,
    ERROR,
    EVENT,
    FINISHED,
    LOADING,
    PLAN,
    PROGRESS,
    RESUMED,
    SESSION_JSON,
    STOP_REQUEST,
    STOPPED,
    SYSTEM,
    TENSORBOARD,
    WARNING,
)
from engine.units import format_duration


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
        waiting = session_requests.pending(self.session)
        if STOP_REQUEST in waiting and not self.stop_reason:
            self.stop_reason = "stop requested"
        if CHECKPOINT_REQUEST in waiting and not self.checkpoint_reason:
            self.checkpoint_reason = "checkpoint requested"

    def clear_checkpoint_request(self) -> None:
        self.checkpoint_reason = None
        session_requests.clear(self.session, CHECKPOINT_REQUEST)

    def clear_stop_request(self) -> None:
        session_requests.clear(self.session, STOP_REQUEST)


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
                write_json_atomic(ckpt / CHECKPOINT_COMPLETE, {"step": state.global_step, "time": time.time(),
                                                    "seconds": round(took, 3), "reason": self.save_reason,
                                                    **({"world_size": world} if world > 1 else {})})
            writer.event(EVENT, kind=CHECKPOINT, path=str(ckpt), step=state.global_step,
                         seconds=round(took, 3), reason=self.save_reason)
            self.last_save = time.monotonic()
            self.save_reason = "every --save-steps"
            control.clear_checkpoint_request()

    return ControlCallback()


PHASE_MODULES = ("trl.trainer.dpo_trainer", "trl.trainer.kto_trainer")  # trainers that precompute with a bar


@contextlib.contextmanager
def _phase_progress(writer: SessionWriter | None):
    """TRL's preference trainers compute the reference log-probs (``precompute_ref_log_probs``) in
    their constructor, a pass over the data with a progress bar from their module's ``tqdm``.
    While the trainer is built, that bar also writes ``progress`` records with a ``phase`` (what,
    batch i of n, ETA), so the Monitor shows the pass instead of "no steps yet"."""
    if writer is None:
        yield
        return
    import importlib

    patched = []
    for name in PHASE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(module, "tqdm", None)):
            patched.append((module, module.tqdm))
            module.tqdm = _reporting_tqdm(module.tqdm, writer)
    try:
        yield
    finally:
        for module, original in patched:
            module.tqdm = original


def _reporting_tqdm(original, writer: SessionWriter):
    def tqdm(*args, **kwargs):
        iterable = kwargs.get("iterable", args[0] if args else None)
        bar = original(*args, **kwargs)  # the bar in run.log, as before
        try:
            total = len(iterable)
        except TypeError:
            total = None
        phase = str(kwargs.get("desc") or "preparing").replace("Computing reference log probs for",
                                                                 "reference log-probs:")

        def batches():
            start = last = time.monotonic()
            for i, item in enumerate(bar, 1):
                yield item
                now = time.monotonic()
                if now - last >= 1.0 or i == total or i == 1:
                    last = now
                    eta = (now - start) / i * (total - i) if total else None
                    writer.event(PROGRESS, phase=phase, prestep=True, step=i, max_steps=total, unit="batches",
                                 eta_seconds=round(eta, 1) if eta is not None else None)

        return batches()

    return tqdm


def _echo_for(stage):
    """The run's one-line progress, with the stage's own metrics (its ``echo``)."""
    def echo(record: dict) -> None:
        parts = [f"step {record['step']}/{record['max_steps']}"]
        if isinstance(record.get("loss"), (int, float)):
            parts.append(f"loss {record['loss']:.4f}")
        for key, label, fmt in stage.echo:
            if isinstance(record.get(key), (int, float)):
                parts.append(f"{label} {record[key]:{fmt}}")
        if record.get("seconds_per_step"):
            parts.append(f"{record['seconds_per_step']:.2f} s/step")
        parts.append(f"ETA {format_duration(record.get('eta_seconds'))}")
        print("  ".join(parts), flush=True)

    return echo


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


def _data_event(writer: SessionWriter, spec: TrainSpec, tokenizer, rows: list[dict], val_rows: list[dict] | None
                ) -> None:
    """Row counts and token lengths; warn when examples will be cut by --max-length."""
    from engine.data import DataReport, token_stats

    report = DataReport(file=spec.data, kind=spec.stage_impl.data_kind, rows=rows)
    stats = token_stats(report, tokenizer, spec.max_length)
    writer.event(EVENT, kind=DATA, train_rows=len(rows), val_rows=len(val_rows or []), tokens=stats)
    over = stats.get("total", {}).get("over_max_length", 0)
    if over:
        writer.event(EVENT, kind=WARNING,
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
        if type == SYSTEM or (type == EVENT and fields.get("kind") == ERROR):
            return self.inner.event(type, **{"rank": self.rank, **fields})
        return {}

    def update(self, **fields) -> None:
        pass

    def set_status(self, status: str, **fields) -> None:
        pass

    def fail(self, message: str, *, detail: str | None = None, **fields) -> None:
        self.inner.event(EVENT, kind=ERROR, message=detail or message, rank=self.rank, **fields)

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
    follow_folder_mode(session)
    writer = SessionWriter.reopen(session) if lead else _FollowerWriter(SessionWriter.reopen(session), rank)
    spec = TrainSpec.from_json(writer.meta["config"])
    stage = spec.stage_impl
    control = RunControl(session)
    control.install()
    if lead:
        control.clear_stop_request()  # a stale request from an earlier stop must not end this run
    writer.update(pid=os.getpid(), **({"world_size": world} if world > 1 else {}))
    say = print if lead else (lambda *a, **k: None)
    sampler = None
    ckpt_dir = session / CHECKPOINTS
    if "tensorboard" in spec.report_to:  # TensorBoard's files beside the session's own, unless the user chose
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(session / TENSORBOARD))
    try:
        _quiet_libraries()
        from engine.probe import SystemSampler
        from engine.recipe import build_trainer, load_tokenizer, resolve_runtime, save_outputs
        from engine.telemetry import TelemetryCallback

        rt = resolve_runtime(spec)
        writer.update(runtime=asdict(rt))
        for note in rt.notes:
            writer.event(EVENT, kind=WARNING, message=note)
        predicted = (writer.meta.get("plan") or {}).get("predicted_peak_bytes")
        writer.event(EVENT, kind=PLAN, plan=spec.plan, device=rt.device, bf16=rt.bf16, optimizer=rt.optimizer,
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
            telemetry = TelemetryCallback(writer, samples_per_step=spec.batch * spec.grad_accum * world,
                                          echo=_echo_for(stage))
            writer.event(EVENT, kind=LOADING, message=f"loading {spec.model}"
                         + (f" + adapter {spec.adapter}" if spec.adapter else ""))
            if spec.precompute_ref and stage.factors.reference:
                writer.event(EVENT, kind=LOADING, message=f"computing the reference log-probs of {len(rows[0]):,} "
                             "examples once, before the first step")
            callbacks = [telemetry] if lead else []
            if writer.meta.get("status") != "running":  # loading and any precompute are part of the run
                writer.set_status("running")
            with _phase_progress(writer if lead else None):
                trainer = build_trainer(spec, rt, ckpt_dir, callbacks + [_control_callback(writer, control, spec)],
                                        tokenizer, rows)
            if resume_from:
                writer.event(EVENT, kind=RESUMED, checkpoint=resume_from)
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
                    session_requests.request_smaller_batch(
                        session, {"rank": rank, "step": trainer.state.global_step + 1, "error": str(e)[:300]})
                    print(f"rounds: rank {rank} ran out of memory at step {trainer.state.global_step + 1}; "
                          "asking the supervisor for a smaller micro-batch", flush=True)
                    os._exit(75)  # now: the other ranks wait in a collective that will never complete
                step = trainer.state.global_step + 1  # the step that ran out of memory
                new = halve_micro_batch(writer, spec, step, str(e))
                if new is None:
                    raise UserError(f"out of memory at micro-batch {spec.batch} ({e})", hint=oom_advice(spec)) \
                        from None
                print(f"rounds: out of memory at step {step}; micro-batch {spec.batch} -> {new.batch}, "
                      f"gradient accumulation {spec.grad_accum} -> {new.grad_accum}", flush=True)
                spec, trainer = new, None
                _free_memory()

        if control.stop_reason:
            control.clear_stop_request()
            writer.event(EVENT, kind=STOPPED, reason=control.stop_reason, step=trainer.state.global_step)
            writer.set_status("stopped", reason=control.stop_reason)
            say(f"rounds: stopped ({control.stop_reason}) at step {trainer.state.global_step}; "
                f"resume with `rounds resume {session.name}`", flush=True)
            return 0
        outputs = save_outputs(trainer, spec, rt, session, tokenizer, lead=lead)  # every rank: FSDP gathers
        if not lead:
            return 0
        writer.update(outputs=outputs)
        writer.event(EVENT, kind=FINISHED, step=trainer.state.global_step, outputs=outputs,
                     **(telemetry.final if telemetry else {}))
        writer.set_status("finished")
        print(f"rounds: finished at step {trainer.state.global_step}; outputs: "
              + ", ".join(f"{k} {v}" for k, v in outputs.items()), flush=True)
        return 0
    except KeyboardInterrupt as e:
        writer.event(EVENT, kind=STOPPED, reason=f"{e}: stopped at once, no checkpoint")
        writer.set_status("stopped", reason=f"{e}: stopped at once, no checkpoint")
        print(f"rounds: {e}: stopped at once without a checkpoint", flush=True)
        return 130
    except UserError as e:
        writer.fail(e.message, detail=str(e))
        print(f"rounds: error: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        traceback.print_exc()
        sys.stderr.flush()
        writer.fail(f"{type(e).__name__}: {e}".splitlines()[0][:500])
        return 1
    finally:
        if sampler:
            sampler.stop()
        writer.close()
        _end_process_group()


def _end_process_group() -> None:
    """Destroy the process group before the interpreter exits: left to finalisation, gloo's worker
    threads can abort the rank (SIGABRT, "terminate called without an active exception") after a
    run that finished, and the launcher then reports the whole run failed."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # nothing left to protect: the run's outcome is already written
        pass




def main(argv: list[str] | None = None) -> int:
    """``python -m engine.run.worker SESSION``: train (or supervise the ranks of) the session's run."""
    session = _session_arg(argv, "engine.run.worker")
    if session is None:
        return 2
    try:  # one process runs a session; it (or the supervisor, for its ranks) holds the lock to the end
        lock = run_lock(session).acquire()
    except UserError as e:  # another worker has it: leave the session to that one, untouched
        print(f"rounds: error: {e}", file=sys.stderr, flush=True)
        return 1
    try:
        spec = TrainSpec.from_json(read_session_json(session)["config"])
        if spec.launcher == "accelerate" and "RANK" not in os.environ:
            from engine.run.supervise import supervise

            return supervise(session)
        return run_session(session)
    finally:
        lock.release()


def _session_arg(argv: list[str] | None, prog: str) -> Path | None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {prog} SESSION_DIR", file=sys.stderr)
        return None
    session = Path(argv[0])
    if not (session / SESSION_JSON).is_file():
        print(f"{prog}: {session}: not a session folder", file=sys.stderr)
        return None
    return session


if __name__ == "__main__":
    sys.exit(main())
