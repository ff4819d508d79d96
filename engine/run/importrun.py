"""A training run `rounds` did not start, brought in from what it left on disk.

A Hugging Face ``Trainer`` (and every TRL trainer) writes ``trainer_state.json`` into each
checkpoint and, at the end, into its output folder: ``log_history`` holds every logged step
(``loss``, ``rewards/margins``, ``learning_rate`` ...), every evaluation (``eval_*``) and the
end-of-run summary (``train_runtime``, ``train_loss``). ``import_run`` turns it into a session of
kind ``train`` with the same ``metrics``/``eval`` records a `rounds` run writes, so Home lists it
and the Monitor draws its curves like any other. Only JSON is read (never ``training_args.bin``,
a pickle).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.session import SessionWriter, check_name, list_sessions
from engine.session.layout import EVAL, EVENT, FINISHED, IMPORTED, METRICS, STOPPED

STATE = "trainer_state.json"
RESERVED = {"step", "max_steps", "time", "type", "sync"}  # a record's own fields: a log key of that name is dropped
MAX_STATE_BYTES = 256 * 1024 * 1024

# keys only one stage's trainer logs -> the stage (the first that matches wins)
STAGE_SIGNS = (("kto", ("kl",)), ("dpo", ("rewards/margins",)), ("sft", ("mean_token_accuracy",)))


def find_state(folder: str | Path) -> Path:
    """``trainer_state.json`` of an output folder (its own, else its last checkpoint's) or of a checkpoint."""
    folder = Path(folder)
    if folder.is_file() and folder.name == STATE:
        return folder
    if not folder.exists():
        raise UserError(f"{folder}: no such folder", hint="give a Trainer's output_dir or one of its checkpoint-N")
    if not folder.is_dir():
        raise UserError(f"{folder}: is not a folder", hint=f"give the folder that holds {STATE}")
    if (folder / STATE).is_file():
        return folder / STATE
    checkpoints = sorted((int(m.group(1)), p) for p in folder.glob("checkpoint-*")
                         if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / STATE).is_file())
    if checkpoints:
        return checkpoints[-1][1] / STATE
    raise UserError(f"{folder}: no {STATE} here or in a checkpoint-N folder inside it",
                    hint="the Trainer writes it at every save and at the end of train(); give its output_dir")


def read_state(path: Path) -> dict:
    """The state's fields `rounds` uses, checked by name; anything else is a clear error."""
    size = path.stat().st_size
    if size > MAX_STATE_BYTES:
        raise UserError(f"{path}: {size / 2**20:,.0f} MiB is too big for a trainer state", file=str(path))
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 (byte {e.start + 1})", file=str(path)) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON: {e.msg}", file=str(path), line=e.lineno,
                        hint="the file was cut short or edited: take a checkpoint's copy") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read", file=str(path)) from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(state).__name__}", file=str(path))
    history = state.get("log_history")
    if not isinstance(history, list):
        raise UserError(f"{path}: 'log_history' must be a list, got {type(history).__name__}", file=str(path),
                        field="log_history", hint="is this a Trainer's trainer_state.json?")
    for key in ("global_step", "max_steps"):
        value = state.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"{path}: '{key}' must be a whole number of steps, got {value!r}", file=str(path),
                            field=key)
    return state


def _value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # as telemetry keeps NaN/inf: visible as text, a gap in the chart
    return v


def _stage(history: list[dict]) -> str | None:
    keys = {k for e in history for k in e}
    return next((stage for stage, signs in STAGE_SIGNS if all(s in keys for s in signs)), None)


def _model_name(folder: Path) -> str | None:
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        try:
            value = json.loads((folder / name).read_text()).get(key)
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        if isinstance(value, str) and value:
            return value
    return None


def _default_name(state_path: Path) -> str | None:
    """The run's folder name (its output_dir, not checkpoint-N), when it makes a valid session name."""
    folder = state_path.parent
    folder = folder.parent if re.fullmatch(r"checkpoint-\d+", folder.name) else folder
    candidate = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-.")[:64]
    try:
        return check_name(candidate)
    except UserError:  # a name we cannot use: the session's id names it
        return None


def import_run(folder: str | Path, root: Path, *, name: str | None = None, stage: str | None = None,
               shared: bool = False, command: list[str] | None = None, again: bool = False) -> SessionWriter:
    """``name``: the session's (default: the run's folder name)."""
    state_path = find_state(folder).resolve()
    name = name or _default_name(state_path)
    state = read_state(state_path)
    history = state["log_history"]
    entries = [(i, e) for i, e in enumerate(history, 1)
               if isinstance(e, dict) and isinstance(e.get("step"), int) and not isinstance(e.get("step"), bool)]
    skipped = len(history) - len(entries)
    step, max_steps = state.get("global_step", 0), state.get("max_steps", 0)
    if not again:
        for info in list_sessions(root):
            cfg = (info.meta or {}).get("config") or {}
            if cfg.get("imported_from") == str(state_path) and cfg.get("global_step") == step \
                    and info.status != "failed":
                raise UserError(f"{state_path} (step {step}) is already session {info.id}",
                                hint="open that one, or import it again with --again")
    found = _stage([e for _, e in entries])
    config = {"imported_from": str(state_path), "global_step": step, "max_steps": max_steps,
              "epochs": state.get("num_train_epochs"), "model": _model_name(state_path.parent),
              "best_metric": state.get("best_metric"), "best_model_checkpoint": state.get("best_model_checkpoint"),
              "batch": state.get("train_batch_size")}
    writer = SessionWriter.create(root, "train", name=name, stage=stage or found, command=command, config=config,
                                  shared=shared)
    try:
        _fill(writer, state_path, entries, skipped, step, max_steps, stage, found)
    except Exception as e:  # noqa: BLE001 - never a half-imported session that looks whole
        writer.fail(f"import failed: {type(e).__name__}: {e}")
        raise UserError(f"{state_path}: could not be imported ({type(e).__name__}: {e})", file=str(state_path),
                        hint=f"session {writer.id} says so; remove it and report the file") from None
    finally:
        writer.close()
    return writer


def _fill(writer: SessionWriter, state_path: Path, entries: list, skipped: int, step: int, max_steps: int,
          stage: str | None, found: str | None) -> None:
    writer.update(imported_from=str(state_path), pid=None)
    writer.event(EVENT, kind=IMPORTED, file=str(state_path), items=len(entries),
                 message=f"imported from {state_path}: {len(entries)} log entries"
                 + (f" ({skipped} not objects with a step, skipped)" if skipped else "")
                 + ("" if stage or not found else f"; stage {found} from the keys it logs"))
    summary: dict = {}
    counts = {METRICS: 0, EVAL: 0}
    for _, e in entries:
        fields = {k: _value(v) for k, v in e.items() if isinstance(k, str) and k not in RESERVED}
        if "train_runtime" in fields and "train_loss" in fields:
            summary = fields
        elif any(k.startswith("eval_") for k in fields):
            writer.event(EVAL, step=e["step"], max_steps=max_steps, **fields)
            counts[EVAL] += 1
        else:
            writer.event(METRICS, step=e["step"], max_steps=max_steps, **fields)
            counts[METRICS] += 1
    if isinstance(summary.get("train_runtime"), (int, float)) and step:
        summary["seconds_per_step"] = round(summary["train_runtime"] / step, 4)
    writer.update(started=None, imported=counts)
    if max_steps and step < max_steps:
        reason = f"imported at step {step} of {max_steps}, where its last trainer_state.json was written"
        writer.event(EVENT, kind=STOPPED, reason=reason, step=step)
        writer.set_status("stopped", reason=reason)
    else:
        writer.event(EVENT, kind=FINISHED, step=step, outputs={},
                     **{k: v for k, v in summary.items() if k not in ("kind", "outputs")})
        writer.set_status("finished")
    writer.update(pid=None)
