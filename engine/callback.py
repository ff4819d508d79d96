"""Watch a training run your own script starts: one line in a Hugging Face ``Trainer`` / TRL script.

    from engine.callback import rounds_callback

    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.add_callback(rounds_callback("stage-b"))
    trainer.train()

When training begins the callback creates a session (kind ``train``) in the sessions root
(``sessions=``, else the one `rounds` finds from the working directory, ``find_sessions_root``) and
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
Under a multi-process launch only the main process writes the session; a stop or checkpoint it
reads is passed to every rank at the same step. If the callback itself fails (a full disk), it
warns once and stops recording: your training goes on.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import time
import warnings
from pathlib import Path

from transformers import TrainerCallback

from engine.errors import UserError
from engine.session import SessionWriter, check_name, run_lock, sessions_root
from engine.session import requests as session_requests
from engine.session.layout import (
    CHECKPOINT,
    CHECKPOINT_REQUEST,
    CONTROL_REQUESTS,
    EVENT,
    FINISHED,
    STOP_REQUEST,
    STOPPED,
)

# the argument classes of TRL's trainers -> the stage `rounds` knows them as
STAGE_OF_ARGS = {"DPOConfig": "dpo", "SFTConfig": "sft", "KTOConfig": "kto"}
SCHEDULE = "the trainer's own save schedule"


def rounds_callback(name: str | None = None, *, sessions: str | os.PathLike | None = None,
                    stage: str | None = None, system_interval: float = 2.0) -> RoundsCallback:
    """A callback that makes this run a `rounds` session (see the module's text). ``name``: the
    session's name (letters, digits, ``.``, ``_``, ``-``); ``stage``: ``dpo``, ``sft``, ``kto``
    or any label (default: from the trainer's arguments class, e.g. ``DPOConfig`` -> ``dpo``)."""
    return RoundsCallback(name, sessions=sessions, stage=stage, system_interval=system_interval)


def _guarded(hook):
    """A hook whose own failure (a full disk, a sessions folder gone) never reaches the user's
    training: it is reported once, and the callback stops recording for the rest of the run."""

    @functools.wraps(hook)
    def run(self, *args, **kwargs):
        if self._broken:
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - anything; the training must go on
            self._break(f"{type(e).__name__}: {e}")
            return None

    return run


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
        self.sessions: list[Path] = []  # one a call of trainer.train()
        self._previous_hook = None
        self._reset()

    def _reset(self) -> None:
        self.writer: SessionWriter | None = None
        self.session: Path | None = None
        self._telemetry = None
        self._sampler = None
        self._lock = None
        self._stopping: str | None = None
        self._save: tuple[float, str] | None = None  # when the coming save was decided, and why
        self._ended = False
        self._broken = False

    # ------------------------------------------------------------------ the trainer's events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.writer is not None and self._ended:  # a second trainer.train(): a session of its own
            self._reset()
        if state.is_world_process_zero and self.writer is None:
            self._begin(args, state, control, model)

    @_guarded
    def _begin(self, args, state, control, model) -> None:
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
        self.sessions.append(self.session)
        self._lock = run_lock(self.session).acquire()
        info = _stage_info(stage)
        self.writer.update(control=CONTROL_REQUESTS, **({"stage_info": info} if info else {}))
        self.writer.event(EVENT, kind="started", message=f"training started by {Path(sys.argv[0]).name or 'python'} "
                          f"(pid {os.getpid()}): its checkpoints go to {config['output_dir']}")
        self.writer.set_status("running")
        self._telemetry = TelemetryCallback(self.writer, samples_per_step=per_step)
        self._telemetry.on_train_begin(args, state, control)
        self._sampler = SystemSampler(self.writer, self.system_interval).start()
        if sys.excepthook != self._on_uncaught:
            self._previous_hook = sys.excepthook
            sys.excepthook = self._on_uncaught
        atexit.register(self._at_exit)

    def on_step_begin(self, args, state, control, **kwargs):
        self._save = None  # a save decided at an earlier step that the trainer did not make

    def on_step_end(self, args, state, control, **kwargs):
        save, stop = self._after_step(args, state, control) or (False, False)
        # every rank must take the same decision, or a stopped rank 0 leaves the others in a collective
        save, stop = _agree(args, save, stop)
        if save:
            control.should_save = True
        if stop:
            control.should_training_stop = True
        if control.should_save and not self._broken and self.writer is not None:
            self._save = (time.monotonic(), "stop requested" if stop else
                          "checkpoint requested" if save else SCHEDULE)

    @_guarded
    def _after_step(self, args, state, control) -> tuple[bool, bool]:
        """Rank 0's telemetry for the step and the requests waiting: (save now, stop now)."""
        if self.writer is None or self._ended:
            return False, False
        self._telemetry.on_step_end(args, state, control)
        save = stop = False
        waiting = session_requests.pending(self.session)
        if CHECKPOINT_REQUEST in waiting:
            session_requests.clear(self.session, CHECKPOINT_REQUEST)
            save = True
        if STOP_REQUEST in waiting and not self._stopping:
            session_requests.clear(self.session, STOP_REQUEST)
            self._stopping = "stop requested"
            save = stop = True
        return save, stop

    @_guarded
    def on_save(self, args, state, control, **kwargs):
        if self.writer is not None and not self._ended:
            started, reason = self._save or (None, SCHEDULE)
            self._save = None
            path = Path(args.output_dir).resolve() / f"checkpoint-{state.global_step}"
            self.writer.event(EVENT, kind=CHECKPOINT, step=state.global_step, path=str(path), reason=reason,
                              seconds=round(time.monotonic() - started, 3) if started else None)

    @_guarded
    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is not None and not self._ended:
            self._telemetry.on_log(args, state, control, logs=logs)

    @_guarded
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
            if self.writer is not None and not self._ended and not self._broken:
                if issubclass(kind, KeyboardInterrupt):
                    reason = "interrupted (Ctrl-C) before training ended"
                    self.writer.event(EVENT, kind=STOPPED, reason=reason)
                    self._end("stopped", reason=reason)
                else:
                    self._end("failed", error=f"{kind.__name__}: {value}".splitlines()[0][:500])
        except Exception:  # noqa: BLE001 - the user's own traceback matters more
            pass
        finally:
            (self._previous_hook or sys.__excepthook__)(kind, value, tb)

    def _at_exit(self) -> None:
        try:
            if self.writer is not None and not self._ended and not self._broken:
                self._end("failed", error="the script ended before training did (no on_train_end)")
        except Exception:  # noqa: BLE001 - nothing to tell at exit
            pass

    def _break(self, why: str) -> None:
        """The callback itself failed: say so once, stop recording, let go of the session."""
        self._broken = True
        where = f" for session {self.session}" if self.session else ""
        warnings.warn(f"rounds_callback: recording stopped{where}: {why}. Training goes on; the session "
                      "stays as it was (Home will show it lost once this process ends).", RuntimeWarning,
                      stacklevel=3)
        for let_go in (lambda: self._sampler and self._sampler.stop(), lambda: self._lock and self._lock.release()):
            try:
                let_go()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _end(self, status: str, **fields) -> None:
        self._ended = True
        if self._sampler:
            self._sampler.stop()
        try:
            if status == "failed":
                self.writer.fail(fields["error"])
            else:
                self.writer.set_status(status, **fields)
            self.writer.close()
        finally:
            if self._lock:
                self._lock.release()
            if sys.excepthook == self._on_uncaught:
                sys.excepthook = self._previous_hook or sys.__excepthook__
            atexit.unregister(self._at_exit)


def _agree(args, save: bool, stop: bool) -> tuple[bool, bool]:
    """Under a multi-process launch, rank 0's decision for this step, on every rank."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed
        return save, stop
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return save, stop
    import torch

    device = args.device if dist.get_backend() == "nccl" else "cpu"
    flags = torch.tensor([int(save), int(stop)], dtype=torch.int32, device=device)
    dist.broadcast(flags, src=0)
    return bool(flags[0].item()), bool(flags[1].item())


def _stage_info(stage: str | None) -> dict:
    if not stage:
        return {}
    try:
        from engine import stages

        return stages.get(stage).describe()
    except Exception:  # a label rounds has no stage for: the common charts
        return {}
