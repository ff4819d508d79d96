"""Refit the planner's CPU time costs (engine.plan.TIME["cpu"]) and QLoRA/LoRA/full activation
coefficients (engine.plan.ACT) from measured steps, and check them shape by shape.

    python bench/plan_accuracy.py --raw steps.jsonl      # measure (about 25 minutes on 2 cores)
    python bench/plan_fit.py steps.jsonl                 # fit, print, and check

Time: every term of engine.plan.step_work is a count of what a step does; the fit finds the
non-negative cost per unit that minimises the squared *relative* error over all points
(scipy's NNLS on rows divided by the measured time). "q4" is tied to "dense" on CPU (after
dequantization a 4-bit layer's matmul is the same fp32 matmul). Memory: the per-token
activation coefficients, by plan, the same way on the measured live-tensor peaks.

Each fit is then repeated with one shape left out and checked on that shape: a model that
only fits the points it has seen shows up there. The coefficients printed are what goes into
engine/plan.py; bench/plan_accuracy.py on a fresh run is the test of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.plan import ACT, FLOP_TERMS, TIME, Device, Strategy, Workload, predict_memory, step_work  # noqa: E402
from engine.shapes import ModelShape  # noqa: E402

RATE = 2.0e11  # FLOP/s the FLOP terms are divided by (the cached probe of this machine)


def load(path: str) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        p = r["point"]
        rows.append({"label": label(p), "shape_name": p["shape"], "shape": ModelShape.from_config(r["config"]),
                     "strategy": Strategy(p["plan"], p.get("precompute_ref", False),
                                          p.get("gradient_checkpointing", True), p["batch"]),
                     "workload": Workload(stage=p["stage"], max_length=p["seq"], lora_rank=p.get("lora_rank", 16)),
                     "seconds": float(np.median(r["step_times"][1:] or r["step_times"])),
                     "measured_bytes": r["measured"]})
    return rows


def label(p: dict) -> str:
    return (f"{p['shape']} {p['stage']} {p['plan']}{'+pre' if p.get('precompute_ref') else ''}"
            f"{'' if p.get('gradient_checkpointing', True) else ' no-gc'} s{p['seq']} b{p['batch']}")


TERMS = [k for k in TIME["cpu"] if k != "q4"]


def time_row(r: dict) -> np.ndarray:
    work = step_work(r["shape"], r["strategy"], r["workload"])
    work = dict(work, dense=work["dense"] + work["q4"])
    return np.array([work[k] / RATE if k in FLOP_TERMS else work[k] for k in TERMS], dtype=float)


def nnls_relative(rows: list[np.ndarray], targets: list[float]) -> np.ndarray:
    from scipy.optimize import nnls

    A = np.array([row / t for row, t in zip(rows, targets)])
    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(A / scale, np.ones(len(A)))
    return x / scale


def fit_time(points: list[dict]) -> np.ndarray:
    return nnls_relative([time_row(r) for r in points], [r["seconds"] for r in points])


def report_time(points: list[dict], x: np.ndarray, show: bool) -> tuple[float, float]:
    errs = []
    for r in points:
        pred = float(time_row(r) @ x)
        e = (pred - r["seconds"]) / r["seconds"]
        errs.append(abs(e))
        if show:
            print(f"  {r['label']:<40}{pred:>9.3f}{r['seconds']:>9.3f}{e * 100:>+8.1f}%")
    return max(errs), float(np.mean(errs))


CPU = Device("cpu", 2**40, "fp32", RATE)


def memory_parts(r: dict) -> tuple[float, np.ndarray, float]:
    """(bytes held without activations, bytes per unit of each ACT coefficient, optimizer-step moment)."""
    plan, saved = r["strategy"].plan, dict(ACT[r["strategy"].plan])
    keys = list(saved)
    try:
        ACT[plan].update({k: 0.0 for k in keys})
        zero = predict_memory(r["shape"], r["strategy"], r["workload"], CPU)["moments"]
        cols = []
        for k in keys:
            ACT[plan][k] = 1.0
            cols.append(predict_memory(r["shape"], r["strategy"], r["workload"], CPU)["moments"]["start of backward"]
                        - zero["start of backward"])
            ACT[plan][k] = 0.0
    finally:
        ACT[plan].update(saved)
    return zero["start of backward"], np.array(cols, dtype=float), zero["optimizer step"]


def fit_memory(points: list[dict]) -> dict:
    """ACT coefficients by plan, from the points whose peak is the start of backward."""
    from scipy.optimize import nnls

    out = {}
    for plan in ACT:
        rows, targets = [], []
        for r in points:
            if r["strategy"].plan != plan:
                continue
            fixed, cols, opt_moment = memory_parts(r)
            if r["measured_bytes"] > 1.03 * opt_moment:
                rows.append(cols / r["measured_bytes"])
                targets.append((r["measured_bytes"] - fixed) / r["measured_bytes"])
        A = np.array(rows)
        used = A.any(axis=0)  # a coefficient no point exercises keeps its value
        x = np.array(list(ACT[plan].values()), dtype=float)
        if len(rows):
            x[used], _ = nnls(A[:, used], np.array(targets))
        out[plan] = dict(zip(ACT[plan], x))
    return out


def report_memory(points: list[dict], act: dict) -> float:
    worst = 0.0
    for r in points:
        fixed, cols, opt_moment = memory_parts(r)
        pred = max(opt_moment, fixed + cols @ np.array(list(act[r["strategy"].plan].values())))
        worst = max(worst, abs(pred - r["measured_bytes"]) / r["measured_bytes"])
    return worst


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    points = load(sys.argv[1])
    x = fit_time(points)
    print("TIME['cpu'] =", {k: float(f"{v:.3g}") for k, v in zip(TERMS, x)}, "(q4 = dense)")
    print(f"  {'point':<40}{'pred s':>9}{'meas s':>9}{'err':>9}")
    worst, mean = report_time(points, x, show=True)
    print(f"in the fit: worst {worst * 100:.1f} %, mean {mean * 100:.1f} %")
    for held in sorted({r["shape_name"] for r in points}):
        xh = fit_time([r for r in points if r["shape_name"] != held])
        worst, mean = report_time([r for r in points if r["shape_name"] == held], xh, show=False)
        print(f"{held} left out of the fit, predicted: worst {worst * 100:.1f} %, mean {mean * 100:.1f} %")
    act = fit_memory(points)
    print("\nACT =", {p: {k: round(float(v), 2) for k, v in c.items()} for p, c in act.items()})
    print(f"memory, in the fit: worst {report_memory(points, act) * 100:.1f} % "
          f"(with the ACT in engine/plan.py now: {report_memory(points, ACT) * 100:.1f} %)")
    for held in sorted({r["shape_name"] for r in points}):
        worst = report_memory([r for r in points if r["shape_name"] == held],
                              fit_memory([r for r in points if r["shape_name"] != held]))
        print(f"{held} left out of the memory fit, predicted: worst {worst * 100:.1f} %")


if __name__ == "__main__":
    main()
