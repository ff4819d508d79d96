"""Training telemetry as a ``TrainerCallback``: every logged metric becomes an event.

A ``metrics`` event carries every key the trainer logs (for DPO: ``loss``,
``rewards/chosen|rejected|margins|accuracies``, ``logps/*``, ``logits/*``,
``grad_norm``, ``learning_rate``, ``epoch``, ``num_tokens`` ...) plus ``step``,
``max_steps``, seconds per step and an ETA smoothed over recent steps, samples/s and
tokens/s. Evaluation metrics go to separate ``eval`` events.
"""

from __future__ import annotations

import math
import time
from collections import deque

from transformers import TrainerCallback

from engine.session.layout import EVAL, METRICS


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as text
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


class StepClock:
    """Seconds per step over a window of recent steps, and the ETA it implies."""

    def __init__(self, window: int = 20):
        self.marks: deque[tuple[int, float]] = deque(maxlen=window + 1)

    def mark(self, step: int, now: float | None = None) -> None:
        self.marks.append((step, time.monotonic() if now is None else now))

    def seconds_per_step(self) -> float | None:
        if len(self.marks) < 2:
            return None
        (s0, t0), (s1, t1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def eta(self, step: int, max_steps: int) -> float | None:
        sps = self.seconds_per_step()
        return None if sps is None else max(0.0, (max_steps - step) * sps)


class TelemetryCallback(TrainerCallback):
    def __init__(self, writer, samples_per_step: int, echo=None):
        self.writer = writer
        self.samples_per_step = samples_per_step
        self.echo = echo  # a function that prints a one-line progress summary, or None
        self.clock = StepClock()
        self.final: dict = {}
        self._last_tokens: tuple[float, float] | None = None  # (num_tokens, time)

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.mark(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.mark(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {k: _clean(v) for k, v in (logs or {}).items()}
        now = time.monotonic()
        if any(k.startswith("eval_") for k in logs):
            self.writer.event(EVAL, step=state.global_step, max_steps=state.max_steps, **logs)
            return
        if "train_runtime" in logs and "train_loss" in logs:  # the trainer's end-of-run summary
            # (with include_num_input_tokens_seen every step's logs carry train_runtime too)
            self.final = logs
            return
        record = {"step": state.global_step, "max_steps": state.max_steps, **logs}
        sps = self.clock.seconds_per_step()
        if sps:
            record["seconds_per_step"] = round(sps, 4)
            record["samples_per_second"] = round(self.samples_per_step / sps, 3)
            record["eta_seconds"] = round(self.clock.eta(state.global_step, state.max_steps), 1)
        if isinstance(logs.get("num_tokens"), (int, float)):
            if self._last_tokens is not None and now > self._last_tokens[1]:
                record["tokens_per_second"] = round(
                    (logs["num_tokens"] - self._last_tokens[0]) / (now - self._last_tokens[1]), 1)
            self._last_tokens = (logs["num_tokens"], now)
        self.writer.event(METRICS, **record)
        if self.echo:
            self.echo(record)
