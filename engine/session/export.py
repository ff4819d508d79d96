"""A session's records for other tools: its scalars as TensorBoard event files.

``rounds export SESSION --tensorboard DIR`` writes every number the session recorded — each
``metrics`` key as ``train/KEY``, each ``eval`` key as ``eval/KEY`` (``eval_`` dropped), and the
system records (``system/cpu_percent``, ``system/ram_used_gib``, ``system/process_rss_gib``,
``system/gpuN_mem_used_gib``, ``system/gpuN_util``) at the training step they were taken in —
with the time each was recorded, so TensorBoard's relative and wall-time axes are the run's own.
The session folder stays the record: this is a copy, made on demand, offline.
"""

from __future__ import annotations

import math
from pathlib import Path

from engine.errors import UserError
from engine.session import EventTail, read_session_json
from engine.session.layout import EVAL, EVENTS, METRICS, SYSTEM

SKIP = {"step", "max_steps", "time", "type"}
GiB = 1 << 30


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    if isinstance(v, str):  # NaN/inf are kept as text in events: TensorBoard takes them as numbers
        return float(v) if v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity") else None
    return float(v)


def scalars(session: Path):
    """(tag, value, step, wall time) for every number the session's events hold, in order."""
    step = 0
    for e in EventTail(session / EVENTS):
        kind, when = e.get("type"), e.get("time")
        if kind in (METRICS, EVAL) and isinstance(e.get("step"), int):
            step = e["step"]
            prefix = "train" if kind == METRICS else "eval"
            for key, value in e.items():
                v = _number(value)
                if key in SKIP or v is None:
                    continue
                yield f"{prefix}/{key.removeprefix('eval_') if kind == EVAL else key}", v, step, when
        elif kind == SYSTEM:
            host, proc = e.get("host") or {}, e.get("process") or {}
            for tag, value, scale in (("cpu_percent", host.get("cpu_percent"), 1),
                                      ("ram_used_gib", host.get("ram_used"), GiB),
                                      ("process_rss_gib", proc.get("rss"), GiB)):
                v = _number(value)
                if v is not None:
                    yield f"system/{tag}", v / scale, step, when
            for g in e.get("gpus") or []:
                if not isinstance(g, dict):
                    continue
                i = g.get("index", 0)
                for tag, value, scale in (("mem_used_gib", g.get("mem_used"), GiB), ("util", g.get("util"), 1)):
                    v = _number(value)
                    if v is not None:
                        yield f"system/gpu{i}_{tag}", v / scale, step, when


def to_tensorboard(session: Path, out: Path) -> dict:
    """Write the session's scalars under ``out`` (TensorBoard's ``--logdir``); returns counts."""
    meta = read_session_json(session)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("exporting to TensorBoard needs the tensorboard package, which is not installed",
                        field="--tensorboard", hint="pip install 'rounds[tensorboard]'") from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder", field="--tensorboard")
    run_dir = out / meta.get("id", session.name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} already holds an export of this session",
                        field="--tensorboard", hint="remove it first, or give another folder")
    tags: dict[str, int] = {}
    last_step = 0
    writer = SummaryWriter(log_dir=str(run_dir))
    try:
        for tag, value, step, when in scalars(session):
            writer.add_scalar(tag, value, global_step=step,
                              walltime=when if isinstance(when, (int, float)) and math.isfinite(when) else None)
            tags[tag] = tags.get(tag, 0) + 1
            last_step = max(last_step, step)
        writer.add_text("rounds/session", f"{meta.get('id')} · {meta.get('kind')} · {meta.get('stage') or ''} · "
                        f"{meta.get('status')}", 0)
    finally:
        writer.close()
    return {"dir": str(run_dir), "tags": tags, "points": sum(tags.values()), "last_step": last_step,
            "status": meta.get("status")}
