"""Launching a training run: everything checked and planned before any weight is loaded, the
session created, the worker started. What ``rounds train`` and ``rounds resume`` call.

``resolve_plan`` settles the plan (``auto`` takes the planner's recommendation; an explicit
plan predicted not to fit is refused with the nearest that fits) and returns a new spec,
never changing the one it was given. ``spawn`` is the one way rounds starts a process that
must outlive the terminal: the worker here, the demo's pipeline too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from engine import methods
from engine.errors import UserError
from engine.recipe import TrainSpec, check_adapter_folder, check_model_folder, load_rows
from engine.session import SessionWriter, pid_alive, read_session_json, run_lock
from engine.session.layout import EVENT, RESUME_REQUESTED, RUN_LOG

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


def spawn(module: str, target: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m MODULE TARGET`` with its output appended to ``log`` (private, or group-readable
    in a shared sessions folder), in its own process session: the terminal's signals never reach it
    directly. A detached child survives the terminal; a foreground one is followed by ``follow``,
    which passes it every signal that stops the command (Ctrl-C, SIGTERM, a hang-up) exactly once.
    The child finds this package whatever the current directory."""
    handle = open(log, "ab", buffering=0)  # noqa: SIM115 - handed to the child
    try:
        os.chmod(log, 0o600 if not os.stat(log.parent).st_mode & 0o070 else 0o640)
    except OSError:
        pass
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-m", module, str(target)], stdin=subprocess.DEVNULL, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env)
    handle.close()
    return proc


def spawn_worker(session: Path) -> subprocess.Popen:
    return spawn("engine.run.worker", session, session / RUN_LOG)


def resolve_plan(spec: TrainSpec, examples: int, budget_bytes: int | None = None, ignore: bool = False,
                 lengths: list[int] | None = None) -> tuple[TrainSpec, dict]:
    """(the spec to run, its plan record for session.json), before any weight is loaded."""
    from engine import plan as pl
    from engine.shapes import read_shape

    shape = read_shape(spec.model)
    device = pl.detect_device(spec.device, budget_bytes)
    ranks = spec.num_processes if spec.launcher == "accelerate" else 1
    gpus = ranks if device.kind == "cuda" else 1
    if ranks > 1 and device.kind == "cpu":  # the ranks share this machine's RAM
        device = replace(device, budget_bytes=device.budget_bytes // ranks,
                         name=f"{device.name}, 1/{ranks} of the RAM for each rank")
    work = pl.Workload(spec.stage, spec.max_length, spec.batch * spec.grad_accum * gpus, examples, spec.epochs,
                       spec.lora_rank, gpus=gpus, shard=_sharding(spec.accelerate_config) if gpus > 1 else "none",
                       lengths=lengths)
    chosen_by = "user"
    warnings = pl.PlanResult(shape, work, device).warnings()
    if spec.plan == "auto":
        result = pl.plan(shape, work, device, assume_generic=spec.assume_generic)
        if result.refused:
            raise UserError(result.refused, field="--plan", hint=pl.GENERIC_HINT)
        if result.recommended is None:
            smallest = min(result.strategies, key=lambda r: r.peak_bytes)
            raise UserError(f"no plan fits {pl.human_bytes(result.usable_bytes)}: the smallest, "
                            f"{smallest.strategy.name}, {smallest.why}",
                            hint="shorten --max-length, or use a device with more memory (`rounds plan` shows all)")
        r = result.recommended
        effective = spec.batch * spec.grad_accum
        s = r.strategy
        spec = replace(spec, plan=s.plan, precompute_ref=s.precompute_ref,
                       gradient_checkpointing=s.gradient_checkpointing, batch=s.micro_batch,
                       grad_accum=max(1, -(-effective // s.micro_batch)))
        chosen_by = "auto"
    else:
        least = spec.stage_impl.min_micro_batch
        if spec.batch < least:
            raise UserError(f"`rounds train {spec.stage}` needs a micro-batch of at least {least}", field="--batch",
                            hint=f"use --batch {least} (or more)")
        r = pl.strategy_result(shape, pl.Strategy(spec.plan, spec.precompute_ref, spec.gradient_checkpointing,
                                                  spec.batch), work, device)
        if not r.fits and not ignore:
            near = pl.nearest_fitting(pl.plan(shape, work, device), r.strategy)
            hint = "pass --ignore-plan to start it anyway"
            if near:
                s = near.strategy
                hint = f"the nearest plan that fits: {s.name} " \
                       f"({pl.plan_flags(s.plan, s.precompute_ref, s.gradient_checkpointing, s.micro_batch)}), " \
                       f"peak {pl.human_bytes(near.peak_bytes)}; or pass --ignore-plan to start it anyway"
            raise UserError(f"plan {r.strategy.name} will not fit: {r.why}", field="--plan", hint=hint)
    record = {"name": spec.plan, "precompute_ref": spec.precompute_ref,
              "gradient_checkpointing": spec.gradient_checkpointing, "micro_batch": spec.batch,
              "grad_accum": spec.grad_accum, "chosen_by": chosen_by, "fits": r.fits,
              "predicted_peak_bytes": r.peak_bytes, "components": r.components, "moment": r.moment,
              "budget_bytes": device.budget_bytes, "usable_bytes": int(device.budget_bytes * (1 - device.margin)),
              "device": device.kind, "predicted_seconds_per_step": r.seconds_per_step,
              "predicted_total_seconds": r.total_seconds, "warnings": warnings,
              "model": shape.describe(), "planned_for": work.summary().get("lengths") or
              {"longest": spec.max_length, "assumed": "every example --max-length tokens"}}
    return spec, record


def describe_plan(record: dict) -> str:
    """One line about a run's plan record: what was chosen, by whom, and the predicted peak."""
    from engine.units import human_bytes

    return (f"plan {record['name']}{' +precompute-ref' if record['precompute_ref'] else ''}, micro-batch "
            f"{record['micro_batch']} x {record['grad_accum']}, gradient checkpointing "
            f"{'on' if record['gradient_checkpointing'] else 'off'} ({record['chosen_by']}); predicted peak "
            f"{human_bytes(record['predicted_peak_bytes'])} of {human_bytes(record['usable_bytes'])} usable"
            + "".join(f"\n  warning: {w}" for w in record.get("warnings") or []))


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


# a tracker -> the module it needs and the extra that installs it
TRACKERS = {"tensorboard": ("tensorboard", "rounds[tensorboard]"), "wandb": ("wandb", "rounds[wandb]"),
            "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio"), "comet_ml": ("comet_ml", "comet_ml"),
            "clearml": ("clearml", "clearml"), "dvclive": ("dvclive", "dvclive"), "swanlab": ("swanlab", "swanlab"),
            "neptune": ("neptune", "neptune"), "codecarbon": ("codecarbon", "codecarbon")}


def check_report_to(names: list[str]) -> None:
    """Each ``--report-to`` tracker is one transformers knows, and installed: said before any session."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--report-to {name}: not a tracker rounds can pass to the trainer", field="--report-to",
                            hint=f"use one or more of: {', '.join(TRACKERS)}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--report-to {name} needs the {module} package, which is not installed",
                            field="--report-to", hint=f"pip install '{extra}'")


def prepare(spec: TrainSpec) -> dict:
    """Everything that can be checked without loading weights; raises ``UserError``."""
    if spec.plan not in methods.PLAN_CHOICES:
        raise UserError(f"unknown plan {spec.plan!r}", field="--plan", hint=f"use {', '.join(methods.PLAN_CHOICES)}")
    stage = spec.stage_impl  # an unknown stage is a UserError naming the known ones
    if spec.batch < 1 or spec.grad_accum < 1:
        raise UserError("--batch and --grad-accum must be at least 1")
    if spec.max_length < 8:
        raise UserError("--max-length must be at least 8", field="--max-length")
    unknown = sorted(set(spec.options) - {o.name for o in stage.options})
    if unknown:
        raise UserError(f"`rounds train {spec.stage}` has no option {unknown[0]!r}", field="--" + unknown[0],
                        hint="its options: " + (", ".join(o.flag for o in stage.options) or "none"))
    check_report_to(spec.report_to)
    config = check_model_folder(spec.model, spec.trust_remote_code)
    if spec.adapter:
        check_adapter_folder(spec.adapter)
    train_rows = load_rows(spec, "data")
    val_rows = load_rows(spec, "val") if spec.val else []
    from engine.data import example_lengths

    return {"model_type": config.get("model_type"), "train_rows": len(train_rows), "val_rows": len(val_rows),
            "lengths": example_lengths(spec.model, train_rows, stage.data_kind)}


def start(spec: TrainSpec, root: Path, *, name: str | None = None, shared: bool = False, detach: bool = False,
          command: list[str] | None = None, budget_bytes: int | None = None,
          ignore_plan: bool = False, spawn: bool = True) -> tuple[SessionWriter, subprocess.Popen | None]:
    stage = spec.stage_impl
    described = stage.describe()
    spec = replace(spec, stage_origin={k: described[k] for k in ("module", "file") if k in described})
    facts = prepare(spec)
    spec, plan_record = resolve_plan(spec, facts["train_rows"], budget_bytes, ignore_plan, lengths=facts["lengths"])
    writer = SessionWriter.create(root, "train", name=name, stage=spec.stage, command=command,
                                  config=spec.to_json(), shared=shared)
    writer.update(plan=plan_record, stage_info=described,
                  data={"train_rows": facts["train_rows"], "val_rows": facts["val_rows"]},
                  launcher=("detached" if detach else "foreground") if spawn else "user")
    return writer, (spawn_worker(writer.path) if spawn else None)


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
    holder = _wait_for_exit(session, meta)
    if holder:  # a worker started by another `rounds resume` a moment ago, not yet in session.json
        raise UserError(holder, hint="watch it (rounds watch), or stop it first")
    now = read_session_json(session)
    if now.get("status") != status or now.get("pid") != meta.get("pid"):  # another resume ran while we waited
        raise UserError(f"{session.name} is already being run by another process (resumed while this one waited; "
                        f"now {now.get('status')})", hint="watch it (rounds watch)")
    writer = SessionWriter.reopen(session)
    writer.event(EVENT, kind=RESUME_REQUESTED, previous_status=status)
    writer.update(launcher="detached" if detach else "foreground")
    return writer, spawn_worker(session)


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _wait_for_exit(session: Path, meta: dict, seconds: float = 120) -> str | None:
    """Who runs the session now, if anyone. The run that wrote `stopped` or `failed` may still be
    exiting (a supervisor waits for its ranks): its lock is waited for, up to ``seconds``; anyone
    else holding it is said at once."""
    lock = run_lock(session)
    own = {meta.get("pid"), meta.get("supervisor_pid")} - {None}
    end = time.monotonic() + seconds
    while True:
        holder = lock.holder()
        if holder is None:
            return None
        if holder["pid"] not in own or time.monotonic() > end:
            return lock.held_by_another()
        time.sleep(0.5)


def follow(proc: subprocess.Popen, log_path: Path, out=None, start: int = 0) -> int:
    """Show a foreground run's log as it grows, from byte ``start`` (a resume: from where it was
    when the resume began, not from step 1 again), until the worker exits. Ctrl-C, SIGTERM and a hang-up
    sent to this command are passed on to the worker (in its own process session, it gets each once):
    the first stops it gracefully, with a checkpoint, and we wait for it; a second stops it at once.
    Output that can no longer be shown (the terminal is gone) is dropped; the run.log keeps it."""
    out = out or sys.stdout.buffer

    def forward(signum, frame):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    pos = start
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
