"""Watch a training run your own script starts: one line in a Hugging Face ``Trainer`` / TRL script.

    from engine.callback import rounds_callback

    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.add_callback(rounds_callback("stage-b"))
    trainer.train()

When training begins the callback creates a session (kind ``train``) in the sessions root (the
same one `rounds` finds: ``sessions=``, else ``$ROUNDS_SESSIONS``, else ``./sessions``) and
writes what `rounds train` writes: ``metrics`` for every logged step (loss, rewards, seconds per
step, ETA, throughput), ``system`` records every ``system_interval`` seconds (GPU, CPU, RAM), and
``status`` and ``event`` records (checkpoints, stop, finish, error). So the run appears in
`rounds` Home and its Monitor, live, with the same charts. The Monitor's ``c`` (checkpoint now)
and ``s`` (stop gracefully) reach the script at its next step boundary through the session's
request files: the trainer saves a checkpoint (``control.should_save``) and, for a stop, ends
training (``control.should_training_stop``) — your script decides what happens after
``trainer.train()`` returns. An exception out of the script marks the session failed; Ctrl-C
marks it stopped; a process killed outright shows as ``lost`` in Home.

Importing this module does not import Textual; it needs transformers (which your trainer has).
Under a multi-process launch only the main process writes the session.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from engine.errors import UserError
from engine.session import SessionWriter, check_name, run_lock, sessions_root
from engine.session import requests as session_requests
from engine.session.layout import CHECKPOINT, CHECKPOINT_REQUEST, EVENT, FINISHED, STOP_REQUEST, STOPPED

# the argument classes of TRL's trainers -> the stage `rounds` knows them as
STAGE_OF_ARGS = {"DPOConfig": "dpo", "SFTConfig": "sft", "KTOConfig": "kto"}
CONTROL = "requests"  # session.json "control": the run acts on request files only (no signals)


def rounds_callback(name: str | None = None, *, sessions: str | os.PathLike | None = None,
                    stage: str | None = None, system_interval: float = 2.0) -> RoundsCallback:
    """A callback that makes this run a `rounds` session (see the module's text). ``name``: the
    session's name (letters, digits, ``.``, ``_``, ``-``); ``stage``: ``dpo``, ``sft``, ``kto``
    or any label (default: from the trainer's arguments class, e.g. ``DPOConfig`` -> ``dpo``)."""
    return RoundsCallback(name, sessions=sessions, stage=stage, system_interval=system_interval)


class RoundsCallback(TrainerCallback):
    def __init__(self, name: str | None = None, *, sessions: str | os.PathLike | None = None,
                 stage: str | None = None, system_interval: float = 2.0):
        if name is not None:
            try:
                check_name(name)  # a bad name fails here, in the line that made the callback
            except UserError as e:
                raise ValueError(f"rounds_callback(name={name!r}): {e.message} ({e.hint})") from None
        if not system_interval > 0:
            raise ValueError(f"system_interval must be a positive number of seconds, not {system_interval!r}")
        self.name, self.stage, self.system_interval = name, stage, system_interval
        self.root = sessions_root(sessions)
        self.writer: SessionWriter | None = None
        self.session: Path | None = None
        self._telemetry = None
        self._sampler = None
        self._lock = None
        self._stopping: str | None = None
        self._save: tuple[float, str] | None = None  # when the coming save was decided, and why
        self._ended = False
        self._previous_hook = None

    # ------------------------------------------------------------------ the trainer's events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self.writer is not None:
            return
        from engine.probe import SystemSampler
        from engine.telemetry import TelemetryCallback

        stage = self.stage or STAGE_OF_ARGS.get(type(args).__name__)
        world = max(1, int(getattr(args, "world_size", 1) or 1))
        per_step = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world
        config = {"model": getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__,
                  "trainer_args": type(args).__name__, "output_dir": str(Path(args.output_dir).resolve()),
                  "batch": int(args.per_device_train_batch_size), "grad_accum": int(args.gradient_accumulation_steps),
                  "learning_rate": float(args.learning_rate), "max_steps": int(state.max_steps or 0),
                  "epochs": float(args.num_train_epochs), "world_size": world}
        self.writer = SessionWriter.create(self.root, "train", name=self.name, stage=stage, config=config)
        self.session = self.writer.path
        self._lock = run_lock(self.session).acquire()
        info = _stage_info(stage)
        self.writer.update(control=CONTROL, **({"stage_info": info} if info else {}))
        self.writer.event(EVENT, kind="started", message=f"training started by {Path(sys.argv[0]).name or 'python'} "
                          f"(pid {os.getpid()}): its checkpoints go to {config['output_dir']}")
        self.writer.set_status("running")
        self._telemetry = TelemetryCallback(self.writer, samples_per_step=per_step)
        self._telemetry.on_train_begin(args, state, control)
        self._sampler = SystemSampler(self.writer, self.system_interval).start()
        self._previous_hook = sys.excepthook
        sys.excepthook = self._on_uncaught
        atexit.register(self._at_exit)

    def on_step_end(self, args, state, control, **kwargs):
        if self.writer is None:
            return
        self._telemetry.on_step_end(args, state, control)
        reason = "the trainer's own save schedule"
        waiting = session_requests.pending(self.session)
        if CHECKPOINT_REQUEST in waiting:
            session_requests.clear(self.session, CHECKPOINT_REQUEST)
            control.should_save = True
            reason = "checkpoint requested"
        if STOP_REQUEST in waiting and not self._stopping:
            session_requests.clear(self.session, STOP_REQUEST)
            self._stopping = "stop requested"
            control.should_save = True
            control.should_training_stop = True
            reason = "stop requested"
        if control.should_save:  # the trainer saves right after the step's callbacks
            self._save = (time.monotonic(), reason)

    def on_save(self, args, state, control, **kwargs):
        if self.writer is not None:
            started, reason = self._save or (None, "the trainer's own save schedule")
            self._save = None
            path = Path(args.output_dir).resolve() / f"checkpoint-{state.global_step}"
            self.writer.event(EVENT, kind=CHECKPOINT, step=state.global_step, path=str(path), reason=reason,
                              seconds=round(time.monotonic() - started, 3) if started else None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is not None:
            self._telemetry.on_log(args, state, control, logs=logs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is None or self._ended:
            return
        final = self._telemetry.final if self._telemetry else {}
        if self._stopping:
            self.writer.event(EVENT, kind=STOPPED, reason=self._stopping, step=state.global_step)
            self._end("stopped", reason=self._stopping)
        else:
            self.writer.event(EVENT, kind=FINISHED, step=state.global_step, outputs={}, **final)
            self._end("finished")

    # ------------------------------------------------------------------ endings that are not on_train_end

    def _on_uncaught(self, kind, value, tb):
        try:
            if self.writer is not None and not self._ended:
                if issubclass(kind, KeyboardInterrupt):
                    reason = "interrupted (Ctrl-C) before training ended"
                    self.writer.event(EVENT, kind=STOPPED, reason=reason)
                    self._end("stopped", reason=reason)
                else:
                    self._end("failed", error=f"{kind.__name__}: {value}".splitlines()[0][:500])
        finally:
            (self._previous_hook or sys.__excepthook__)(kind, value, tb)

    def _at_exit(self) -> None:
        if self.writer is not None and not self._ended:
            self._end("failed", error="the script ended before training did (no on_train_end)")

    def _end(self, status: str, **fields) -> None:
        self._ended = True
        if self._sampler:
            self._sampler.stop()
        if status == "failed":
            self.writer.fail(fields["error"])
        else:
            self.writer.set_status(status, **fields)
        self.writer.close()
        if self._lock:
            self._lock.release()
        if sys.excepthook == self._on_uncaught:
            sys.excepthook = self._previous_hook or sys.__excepthook__
        atexit.unregister(self._at_exit)


def _stage_info(stage: str | None) -> dict:
    if not stage:
        return {}
    try:
        from engine import stages

        return stages.get(stage).describe()
    except Exception:  # a label rounds has no stage for: the common charts
        return {}
