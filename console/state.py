"""What the Monitor shows, computed from a session's events (no Textual here, so it is tested alone).

``MonitorState`` is the session's ``Digest`` (engine.session.history: ``feed(records)`` takes events
as the tail reader returns them, in any batch size, and keeps bounded histories — metric series by
step, a step done again after a resume or an OOM recovery replacing the old value; system samples;
the notable events) with the session's ``session.json`` and the event log as lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.session import layout as L
from engine.session.history import NOT_SERIES, Digest, Series, SeriesTable  # noqa: F401 - Series for callers
from engine.units import human_bytes

SERIES = {  # every run's metrics; a stage adds its own (engine.stages: `series`, recorded in session.json)
    "loss": "loss",
    "eval_loss": "eval loss",
    "tokens_per_second": "tokens/s",
    "learning_rate": "learning rate",
    "grad_norm": "grad norm",
    "items_per_second": "items/s",
}
LOSS_CHARTS = [("loss", ["loss", "eval_loss"])]
COMMON_CHARTS = [("throughput", ["tokens_per_second", "items_per_second"]),
                 ("optimizer", ["learning_rate", "grad_norm"])]


def stage_info(meta: dict) -> dict:
    """What the session says about its stage (charts, series labels); sessions written before
    stages described themselves get it from the stage registry (no import of training code)."""
    info = meta.get("stage_info")
    if isinstance(info, dict):  # written by the run; read as far as it has the expected shape
        charts = [(t, list(keys)) for c in info.get("charts") or [] if isinstance(c, (list, tuple)) and len(c) == 2
                  for t, keys in [c] if isinstance(t, str) and isinstance(keys, list)
                  and all(isinstance(k, str) for k in keys)] if isinstance(info.get("charts"), list) else []
        series = info.get("series") if isinstance(info.get("series"), dict) else {}
        out = {**info, "charts": charts, "series": {k: v for k, v in series.items() if isinstance(v, str)}}
        if not isinstance(info.get("unit"), str):
            out.pop("unit", None)
        return out
    if meta.get("kind") == "train" and meta.get("stage"):
        from engine import stages

        try:
            return stages.get(meta["stage"]).describe()
        except Exception:  # a stage this installation does not know: the common charts only
            return {}
    return {}


def chart_sets(info: dict) -> list[tuple[str, list[str]]]:
    """The Monitor's chart sets for a session (``info``: its ``stage_info``): loss, the stage's own,
    throughput, optimizer."""
    own = [(str(t), [str(k) for k in keys]) for t, keys in (info.get("charts") or [])
           if isinstance(keys, list) and keys]
    return LOSS_CHARTS + own + COMMON_CHARTS


def series_label(info: dict, key: str) -> str:
    return SERIES.get(key) or (info.get("series") or {}).get(key) or key


@dataclass
class MonitorState(Digest):
    """A session's digest (engine.session.history: what its events add up to, bounded) with its
    ``session.json`` and the event log's lines."""

    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        Digest.__init__(self)
        self._lines_key: tuple | None = None
        self._lines: list[tuple[str, str, str]] = []

    @property
    def lines(self) -> list[tuple[str, str, str]]:
        """(time, level, text) for each kept notable event, oldest first (formatted once per change)."""
        key = (self.notable_count, len(self.notable))
        if key != self._lines_key:
            self._lines_key, self._lines = key, [line_of(rec) for rec in self.notable]
        return self._lines

    def adopt(self, other: Digest) -> None:
        """Take another digest's state (a history read in the background), keeping ``meta``."""
        meta = self.meta
        self.__dict__.update(other.__dict__)
        self.meta = meta
        self._lines_key = None


def line_of(rec: dict) -> tuple[str, str, str]:
    """One event log line for a notable event: (time, level, text)."""
    t = rec.get("time")
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "--:--:--"
    kind = rec.get("type")
    if kind == L.PROGRESS:
        return stamp, "", f"{rec.get('phase')}: {rec.get('max_steps') or '?'} {rec.get('unit') or 'batches'}"
    if kind == L.EVAL:
        return stamp, "", f"eval at step {rec.get('step')}: loss {_num(rec.get('eval_loss'))}"
    if kind == L.STATUS:
        return stamp, "", f"status: {rec.get('status', '?')}"
    if kind == "corrupt":
        return stamp, "warning", f"events.jsonl line {rec.get('line')} is damaged and was skipped"
    k = rec.get("kind")
    describe = EVENT_TEXT.get(k)
    text = None
    if describe is not None:
        try:
            text = describe(rec)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            text = None  # a field of an unexpected shape (another writer, a hand edit): the plain line
    if text is None:
        text = rec.get("message") or k or "event"
    return stamp, "error" if k == L.ERROR else "warning" if k in (L.WARNING, L.OOM_RECOVERED) else "", str(text)


def _finished(rec: dict) -> str:
    for unit in ("pairs", "examples"):  # pairs sessions: DPO pairs, or KTO examples
        if f"train_{unit}" in rec:
            return f"finished: {rec[f'train_{unit}']:,} training and {rec.get(f'val_{unit}', 0):,} validation {unit}"
    if "items" in rec:
        return f"finished: {rec['items']:,} answers"
    return f"finished at step {rec.get('step', '')}"


def _oom(rec: dict) -> str:
    mb, ga = rec.get("micro_batch", ["?", "?"]), rec.get("grad_accum", ["?", "?"])
    return (f"out of memory at step {rec.get('step')}: micro-batch {mb[0]}→{mb[1]}, "
            f"gradient accumulation {ga[0]}→{ga[1]}; resumed")


def _plan(rec: dict) -> str:
    peak = rec.get("predicted_peak_bytes")
    return f"plan {rec.get('plan', '')} on {rec.get('device', '?')}" + (
        f", predicted peak {human_bytes(peak)}" if peak else "")


# one line for the event log per event kind (engine.session.layout lists them with their fields)
EVENT_TEXT = {
    L.CHECKPOINT: lambda r: f"checkpoint at step {r.get('step')} saved in {_num(r.get('seconds'))} s "
                            f"({r.get('reason')})",
    L.OOM_RECOVERED: _oom,
    L.RESUMED: lambda r: f"resumed from {str(r.get('checkpoint') or '').rsplit('/', 1)[-1] or 'the start'}",
    L.PLAN: _plan,
    L.DATA: lambda r: f"data: {r.get('train_rows')} training rows, {r.get('val_rows')} validation",
    L.ERROR: lambda r: f"error: {r.get('message')}",
    L.FINISHED: _finished,
    L.STOPPED: lambda r: f"stopped ({r.get('reason')}) at step {r.get('step', '?')}",
}  # any other kind (warning, loading, ...): its message, else its name


def _num(v) -> str:
    if not isinstance(v, (int, float)):
        return "N/A"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.4g}"


fmt_num = _num
