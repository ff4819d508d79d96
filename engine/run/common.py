"""What the launcher, the supervisor and the worker share: checkpoints that are complete, the one
micro-batch halving after out-of-memory, and the advice when memory cannot be lowered further."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from engine.recipe import TrainSpec
from engine.session import SessionWriter
from engine.session.layout import CHECKPOINT_COMPLETE, EVENT, OOM_RECOVERED, WARNING


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints that were completely written, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and (p / CHECKPOINT_COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def set_aside_incomplete(ckpt_dir: Path, writer: SessionWriter) -> None:
    """A checkpoint without its completion mark was cut off mid-save: never resume from it."""
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and not (p / CHECKPOINT_COMPLETE).is_file():
            target = ckpt_dir / f"incomplete-{p.name}-{int(time.time())}"
            p.rename(target)
            writer.event(EVENT, kind=WARNING, message=f"checkpoint {p.name} was incomplete; set aside as "
                                                      f"{target.name}")


def halve_micro_batch(writer: SessionWriter, spec: TrainSpec, step: int | None, error: str,
                      **where) -> TrainSpec | None:
    """After out-of-memory: the same run with half the micro-batch and twice the gradient
    accumulation (the effective batch is unchanged), recorded in session.json's ``config`` (what
    runs; ``plan`` stays the record of what was planned and predicted) and as an ``oom_recovered``
    event. None when the micro-batch is already the stage's least."""
    least = spec.stage_impl.min_micro_batch
    if spec.batch // 2 < least:
        return None
    new = replace(spec, batch=spec.batch // 2, grad_accum=spec.grad_accum * 2)
    writer.update(config=new.to_json(), oom_recoveries=(writer.meta.get("oom_recoveries") or 0) + 1)
    writer.event(EVENT, kind=OOM_RECOVERED, step=step, error=error[:300], micro_batch=[spec.batch, new.batch],
                 grad_accum=[spec.grad_accum, new.grad_accum], **where)
    return new


def oom_advice(spec: TrainSpec) -> str:
    options = []
    if not spec.method.quantize:
        options.append("--plan qlora (4-bit base weights)")
    if spec.stage_impl.factors.reference and not spec.precompute_ref:
        options.append("--precompute-ref (no reference forward while training)")
    if not spec.gradient_checkpointing:
        options.append("gradient checkpointing (drop --no-gradient-checkpointing)")
    options.append(f"a shorter --max-length (now {spec.max_length})")
    return "options that lower memory: " + "; ".join(options)
