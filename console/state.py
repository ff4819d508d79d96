"""What the Monitor shows, computed from a session's events (no Textual here, so it is tested alone).

``MonitorState.feed(records)`` takes events as the tail reader returns them, in any batch
size, and keeps bounded histories: metric series by step (a step done again after a resume
or an OOM recovery replaces the old value), system samples, and the event log as lines.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.units import human_bytes

SERIES = {
    "loss": "loss",
    "eval_loss": "eval loss",
    "rewards/margins": "reward margin",
    "rewards/accuracies": "reward accuracy",
    "tokens_per_second": "tokens/s",
    "learning_rate": "learning rate",
    "grad_norm": "grad norm",
    "items_per_second": "items/s",
}
CHART_SETS = [
    ("loss", ["loss", "eval_loss"]),
    ("DPO rewards", ["rewards/margins", "rewards/accuracies"]),
    ("throughput", ["tokens_per_second", "items_per_second"]),
    ("optimizer", ["learning_rate", "grad_norm"]),
]


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
    eta_seconds: float | None = None
    seconds_per_step: float | None = None
    series: dict[str, Series] = field(default_factory=lambda: {k: Series() for k in SERIES})
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
            if kind in ("metrics", "progress"):
                self._metrics(rec)
            elif kind == "eval":
                if isinstance(rec.get("eval_loss"), (int, float)):
                    self.series["eval_loss"].add(rec.get("step", 0), rec["eval_loss"])
                self._line(rec, f"eval at step {rec.get('step')}: loss {_num(rec.get('eval_loss'))}")
            elif kind == "system":
                self._system(rec)
            elif kind == "status":
                self.status = rec.get("status", self.status)
                self._line(rec, f"status: {self.status}")
            elif kind == "event":
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
        for key in SERIES:
            value = rec.get(key)
            if isinstance(value, (int, float)) and isinstance(step, int):
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
        if k == "checkpoint":
            text = f"checkpoint at step {rec.get('step')} saved in {_num(rec.get('seconds'))} s ({rec.get('reason')})"
        elif k == "oom_recovered":
            mb, ga = rec.get("micro_batch", ["?", "?"]), rec.get("grad_accum", ["?", "?"])
            text = (f"out of memory at step {rec.get('step')}: micro-batch {mb[0]}→{mb[1]}, "
                    f"gradient accumulation {ga[0]}→{ga[1]}; resumed")
        elif k == "resumed":
            text = f"resumed from {str(rec.get('checkpoint') or '').rsplit('/', 1)[-1] or 'the start'}"
        elif k == "plan":
            peak = rec.get("predicted_peak_bytes")
            text = (f"plan {rec.get('plan', '')} on {rec.get('device', '?')}"
                    + (f", predicted peak {human_bytes(peak)}" if peak else ""))
        elif k == "data":
            text = f"data: {rec.get('train_rows')} training rows, {rec.get('val_rows')} validation"
        elif k == "error":
            self.error = rec.get("message")
            text = f"error: {rec.get('message')}"
        elif k == "finished":
            if "train_pairs" in rec:
                text = f"finished: {rec['train_pairs']:,} training and {rec.get('val_pairs', 0):,} validation pairs"
            elif "items" in rec:
                text = f"finished: {rec['items']:,} answers"
            else:
                text = f"finished at step {rec.get('step', '')}"
        elif k == "stopped":
            text = f"stopped ({rec.get('reason')}) at step {rec.get('step', '?')}"
        else:
            text = rec.get("message") or k or "event"
            if k and k not in ("warning", "loading") and not rec.get("message"):
                text = k
        self._line(rec, text, "error" if k == "error" else "warning" if k in ("warning", "oom_recovered") else "")

    def _line(self, rec: dict, text: str, level: str = "") -> None:
        t = rec.get("time")
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "--:--:--"
        self.lines.append((stamp, level, text))

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.max_steps:
            return None
        return min(1.0, self.step / self.max_steps)


def _num(v) -> str:
    if not isinstance(v, (int, float)):
        return "N/A"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.4g}"


fmt_num = _num
