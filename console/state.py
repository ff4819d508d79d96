"""What the Monitor shows, computed from a session's events (no Textual here, so it is tested alone).

``MonitorState.feed(records)`` takes events as the tail reader returns them, in any batch
size, and keeps bounded histories: metric series by step (a step done again after a resume
or an OOM recovery replaces the old value), system samples, and the event log as lines.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.session import layout as L
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
NOT_SERIES = {"step", "max_steps", "eta_seconds", "seconds_per_step", "time", "epoch"}  # bookkeeping, not charted


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


class SeriesTable(dict):
    """Metric name -> Series; a name not seen yet reads as an empty series."""

    def __missing__(self, key: str) -> Series:
        series = self[key] = Series()
        return series


class Series:
    """(step, value) points, ordered by step, bounded; a repeated step truncates what followed it."""

    def __init__(self, maxlen: int = 20_000):
        self.steps: deque[int] = deque(maxlen=maxlen)
        self.values: deque[float] = deque(maxlen=maxlen)

    def add(self, step: int, value: float) -> None:
        while self.steps and self.steps[-1] >= step:
            self.steps.pop()
            self.values.pop()
        self.steps.append(step)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None

    def downsample(self, width: int) -> list[float]:
        """At most ``width`` points: bucket means, so a 100,000-step curve fits a 60-column chart."""
        vals = list(self.values)
        if width <= 0 or len(vals) <= width:
            return vals
        out = []
        for i in range(width):
            a, b = i * len(vals) // width, (i + 1) * len(vals) // width
            chunk = vals[a:max(b, a + 1)]
            out.append(sum(chunk) / len(chunk))
        return out


@dataclass
class MonitorState:
    meta: dict = field(default_factory=dict)
    status: str = "?"
    step: int | None = None
    max_steps: int | None = None
    unit: str = "step"  # what a step counts: an eval's items, a pairs run's MiB
    phase: dict | None = None  # the last `progress` record of a pass before the first step, until a step
    eta_seconds: float | None = None
    seconds_per_step: float | None = None
    series: SeriesTable = field(default_factory=SeriesTable)
    system: dict | None = None
    ranks: dict[int, dict] = field(default_factory=dict)  # latest system record of each rank (multi-process)
    gpu_mem: dict[int, deque] = field(default_factory=dict)
    gpu_util: dict[int, deque] = field(default_factory=dict)
    gpu_temp: dict[int, deque] = field(default_factory=dict)
    gpu_power: dict[int, deque] = field(default_factory=dict)
    cpu: deque = field(default_factory=lambda: deque(maxlen=600))
    ram: deque = field(default_factory=lambda: deque(maxlen=600))
    lines: deque = field(default_factory=lambda: deque(maxlen=1000))
    last_event_time: float | None = None
    error: str | None = None
    events_seen: int = 0
    corrupt_lines: int = 0

    def feed(self, records: list[dict]) -> None:
        for rec in records:
            self.events_seen += 1
            kind = rec.get("type")
            t = rec.get("time")
            if isinstance(t, (int, float)):
                self.last_event_time = t
            if kind == L.PROGRESS and rec.get("prestep") and rec.get("phase"):  # a pass before the first step
                if not self.phase or self.phase.get("phase") != rec["phase"]:
                    self._line(rec, f"{rec['phase']}: {rec.get('max_steps') or '?'} {rec.get('unit') or 'batches'}")
                self.phase = rec
            elif kind in (L.METRICS, L.PROGRESS):
                self.phase = None
                self._metrics(rec)
            elif kind == L.EVAL:
                if isinstance(rec.get("eval_loss"), (int, float)):
                    self.series["eval_loss"].add(rec.get("step", 0), rec["eval_loss"])
                self._line(rec, f"eval at step {rec.get('step')}: loss {_num(rec.get('eval_loss'))}")
            elif kind == L.SYSTEM:
                self._system(rec)
            elif kind == L.STATUS:
                self.status = rec.get("status", self.status)
                self._line(rec, f"status: {self.status}")
            elif kind == L.EVENT:
                self._event(rec)
            elif kind == "corrupt":
                self.corrupt_lines += 1
                self._line(rec, f"events.jsonl line {rec.get('line')} is damaged and was skipped", "warning")

    def _metrics(self, rec: dict) -> None:
        step = rec.get("step")
        if isinstance(step, int):
            self.step = step
        if rec.get("max_steps"):
            self.max_steps = rec["max_steps"]
        if isinstance(rec.get("unit"), str):
            self.unit = rec["unit"]
        if rec.get("eta_seconds") is not None:
            self.eta_seconds = rec["eta_seconds"]
        if rec.get("seconds_per_step"):
            self.seconds_per_step = rec["seconds_per_step"]
        if not isinstance(step, int):
            return
        for key, value in rec.items():  # every metric the run logs, the stage's own included
            if key not in NOT_SERIES and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.series[key].add(step, float(value))

    def _system(self, rec: dict) -> None:
        rank = rec.get("rank")
        if isinstance(rank, int):
            self.ranks[rank] = rec
            if rank != 0:  # host and GPU histories come from rank 0 (every rank sees the same machine)
                return
        self.system = rec
        for g in rec.get("gpus") or []:
            i = g.get("index", 0)
            for store, key in ((self.gpu_mem, "mem_used"), (self.gpu_util, "util"), (self.gpu_temp, "temp_c"),
                               (self.gpu_power, "power_w")):
                if g.get(key) is not None:
                    store.setdefault(i, deque(maxlen=600)).append(float(g[key]))
        host = rec.get("host") or {}
        if host.get("cpu_percent") is not None:
            self.cpu.append(float(host["cpu_percent"]))
        if host.get("ram_used") is not None:
            self.ram.append(float(host["ram_used"]))

    def _event(self, rec: dict) -> None:
        k = rec.get("kind")
        if k == L.ERROR:
            self.error = rec.get("message")
        describe = EVENT_TEXT.get(k)
        text = None
        if describe is not None:
            try:
                text = describe(rec)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError):
                text = None  # a field of an unexpected shape (another writer, a hand edit): the plain line
        if text is None:
            text = rec.get("message") or k or "event"
        self._line(rec, text, "error" if k == L.ERROR else "warning" if k in (L.WARNING, L.OOM_RECOVERED) else "")

    def _line(self, rec: dict, text: str, level: str = "") -> None:
        t = rec.get("time")
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "--:--:--"
        self.lines.append((stamp, level, text))

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.max_steps:
            return None
        return min(1.0, self.step / self.max_steps)


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
