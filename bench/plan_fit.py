"""Refit the planner's CPU time costs (engine.plan.TIME["cpu"]) and QLoRA/LoRA/full activation
coefficients (engine.plan.ACT) from measured steps, and check them shape by shape.

    python bench/plan_accuracy.py --raw steps.jsonl      # measure (about 25 minutes on 2 cores)
    python bench/plan_fit.py steps.jsonl [more.jsonl]    # fit, print, and check
    python bench/plan_fit.py --check steps.jsonl         # the planner as it is now, against those steps
    python bench/plan_fit.py --check --median a.jsonl b.jsonl c.jsonl  # each point's median over the runs
    python bench/plan_fit.py --repeatability a.jsonl b.jsonl  # the same points measured in two runs
    python bench/plan_fit.py --cross fit.jsonl other.jsonl   # fit on one run, check on another

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

import contextlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plan_accuracy import timed_seconds  # noqa: E402

from engine.plan import (  # noqa: E402
    ACT,
    FLOP_TERMS,
    TIME,
    Device,
    Strategy,
    Workload,
    _probe_cache,
    cpu_probe_key,
    predict_memory,
    probe_scales,
    step_work,
)
from engine.shapes import ModelShape  # noqa: E402


def cached_probe() -> dict:
    """This machine's cached CPU probe (for raw files written before each line carried its run's)."""
    try:
        data = json.loads(_probe_cache().read_text())
        return data[cpu_probe_key()]
    except (OSError, ValueError, KeyError):
        sys.exit("the raw file has no probe and this machine has no cached one: run rounds plan once")


def load(path: str) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        p = r["point"]
        # the probe the run predicted with: FLOP terms are divided by its matmul throughput, the 4-bit
        # terms scaled by its own 4-bit probes (engine.plan.probe_scales), as time_terms does
        probe = r.get("probe") or cached_probe()
        rows.append({"label": label(p), "shape_name": p["shape"], "shape": ModelShape.from_config(r["config"]),
                     "probe": probe,
                     "strategy": Strategy(p["plan"], p.get("precompute_ref", False),
                                          p.get("gradient_checkpointing", True), p["batch"]),
                     "workload": Workload(stage=p["stage"], max_length=p["seq"], lora_rank=p.get("lora_rank", 16)),
                     "seconds": seconds(r),
                     "measured_bytes": r["measured"], "held_back": bool(p.get("held_back"))})
    return rows


def seconds(r: dict) -> float:
    """A point's seconds per step, by bench/plan_accuracy.py's rule (its seconds_per_step is not read:
    lines written before that rule carry the median); lines written before the tracker was switched
    off for timing: the median of all the steps after the first, as printed then; a point measured in
    several processes: the median of their figures."""
    if r.get("repeat_seconds"):  # several fresh processes (--repeat): the median of theirs
        return float(np.median(r["repeat_seconds"]))
    if "tracked_steps" not in r:
        return float(np.median(r["step_times"][1:] or r["step_times"]))
    return timed_seconds(r["step_times"], r["tracked_steps"])


def label(p: dict) -> str:
    return (f"{p['shape']} {p['stage']} {p['plan']}{'+pre' if p.get('precompute_ref') else ''}"
            f"{'' if p.get('gradient_checkpointing', True) else ' no-gc'} s{p['seq']} b{p['batch']}")


TERMS = [k for k in TIME["cpu"] if k != "q4"]


def time_row(r: dict) -> np.ndarray:
    work = step_work(r["shape"], r["strategy"], r["workload"])
    work = dict(work, dense=work["dense"] + work["q4"])
    probe, scale = r["probe"], probe_scales(r["probe"])
    return np.array([work[k] / probe["flops"] if k in FLOP_TERMS else work[k] * scale.get(k, 1.0) for k in TERMS],
                    dtype=float)


def nnls_relative(rows: list[np.ndarray], targets: list[float]) -> np.ndarray:
    from scipy.optimize import nnls

    A = np.array([row / t for row, t in zip(rows, targets, strict=True)])
    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(A / scale, np.ones(len(A)))
    return x / scale


def fit_time(points: list[dict]) -> np.ndarray:
    """Costs of the terms these points exercise; a term none of them has (dequant_large, say)
    keeps its value from engine/plan.py, and its share is taken off the measured times first."""
    rows = np.array([time_row(r) for r in points])
    used = rows.any(axis=0)
    kept = np.array([TIME["cpu"][k] for k in TERMS])
    x = kept.copy()
    targets = [r["seconds"] - row[~used] @ kept[~used] for r, row in zip(points, rows, strict=True)]
    x[used] = nnls_relative(list(rows[:, used]), targets)
    return x


def report_time(points: list[dict], x: np.ndarray, show: bool) -> tuple[float, float]:
    errs = []
    for r in points:
        pred = float(time_row(r) @ x)
        e = (pred - r["seconds"]) / r["seconds"]
        errs.append(abs(e))
        if show:
            print(f"  {r['label']:<40}{pred:>9.3f}{r['seconds']:>9.3f}{e * 100:>+8.1f}%")
    return max(errs), float(np.mean(errs))


CPU = Device("cpu", 2**40, "fp32", 2e11)  # memory only (its throughput plays no part)


MOMENTS = ("start of backward", "backward through a layer")


def memory_parts(r: dict) -> tuple[dict, dict, float]:
    """For each activation moment: bytes without activations, and bytes per unit of each ACT
    coefficient (both moments are linear in them); and the optimizer-step moment."""
    plan, saved = r["strategy"].plan, dict(ACT[r["strategy"].plan])
    keys = list(saved)

    def moments() -> dict:
        return predict_memory(r["shape"], r["strategy"], r["workload"], CPU)["moments"]

    try:
        ACT[plan].update({k: 0.0 for k in keys})
        zero = moments()
        cols = {m: [] for m in MOMENTS}
        for k in keys:
            ACT[plan][k] = 1.0
            one = moments()
            for m in MOMENTS:
                cols[m].append(one[m] - zero[m])
            ACT[plan][k] = 0.0
    finally:
        ACT[plan].update(saved)
    return ({m: zero[m] for m in MOMENTS}, {m: np.array(c, dtype=float) for m, c in cols.items()},
            zero["optimizer step"])


def predict_bytes(r: dict, coefs: np.ndarray) -> tuple[float, str]:
    fixed, cols, opt_moment = memory_parts(r)
    best = max(MOMENTS, key=lambda m: fixed[m] + cols[m] @ coefs)
    value = fixed[best] + cols[best] @ coefs
    return (value, best) if value >= opt_moment else (opt_moment, "optimizer step")


def fit_memory(points: list[dict]) -> dict:
    """ACT coefficients by plan. The peak is the largest of the moments, so each point is fitted
    to the moment the current coefficients say is its peak, and the assignment is repeated
    until it settles (points whose peak is the optimizer step say nothing about activations)."""
    from scipy.optimize import nnls

    out = {}
    for plan in ACT:
        mine = [r for r in points if r["strategy"].plan == plan]
        x = np.array(list(ACT[plan].values()), dtype=float)
        for _ in range(8):
            rows, targets = [], []
            for r in mine:
                fixed, cols, _ = memory_parts(r)
                _, moment = predict_bytes(r, x)
                if moment == "optimizer step":
                    continue
                rows.append(cols[moment] / r["measured_bytes"])
                targets.append((r["measured_bytes"] - fixed[moment]) / r["measured_bytes"])
            if not rows:
                break
            A = np.array(rows)
            used = A.any(axis=0)  # a coefficient no point exercises keeps its value
            new = x.copy()
            new[used], _ = nnls(A[:, used], np.array(targets))
            if np.allclose(new, x, rtol=1e-4):
                break
            x = new
        out[plan] = dict(zip(ACT[plan], x, strict=True))
    return out


def report_memory(points: list[dict], act: dict) -> float:
    worst = 0.0
    for r in points:
        pred, _ = predict_bytes(r, np.array(list(act[r["strategy"].plan].values())))
        worst = max(worst, abs(pred - r["measured_bytes"]) / r["measured_bytes"])
    return worst


@contextlib.contextmanager
def coefficients(time_x: np.ndarray, act: dict):
    """engine/plan.py's TIME["cpu"] and ACT replaced by these while inside (restored after), so the
    planner itself predicts with a refit that is not committed."""
    saved_time, saved_act = dict(TIME["cpu"]), {p: dict(c) for p, c in ACT.items()}
    try:
        fitted = {k: float(v) for k, v in zip(TERMS, time_x, strict=True)}
        TIME["cpu"].update(fitted, q4=fitted["dense"])  # tied on CPU, as in fit_time
        for plan, c in act.items():
            ACT[plan].update(c)
        yield
    finally:
        TIME["cpu"].clear()
        TIME["cpu"].update(saved_time)
        for plan, c in saved_act.items():
            ACT[plan].clear()
            ACT[plan].update(c)


def cross(fit_on: list[dict], others: list[dict]) -> dict:
    """Fit on one run's points (the held-back ones left out, as in a refit), then predict another
    run's with those coefficients: what a refit would do on a run it has not seen."""
    points = [r for r in fit_on if not r["held_back"]]
    time_x, act = fit_time(points), fit_memory(points)
    with coefficients(time_x, act):
        return check(others)


def check(every: list[dict]) -> dict:
    """The planner as it is now (engine/plan.py's ACT and TIME, every counted term) against a run's
    measurements, point by point: what bench/plan_accuracy.py would print for them, without
    running them again. A term added after the run is checked on data it was not fitted to."""
    time_x = np.array([TIME["cpu"][k] for k in TERMS])
    print(f"  {'point':<40}{'pred MiB':>10}{'meas':>9}{'err':>8}{'pred s':>9}{'meas':>8}{'err':>8}")
    worst_m, worst_t, worst_held, by_shape = 0.0, 0.0, 0.0, {}
    for r in every:
        pred = predict_memory(r["shape"], r["strategy"], r["workload"], CPU)["peak_bytes"]
        em = (pred - r["measured_bytes"]) / r["measured_bytes"]
        pt = float(time_row(r) @ time_x)
        et = (pt - r["seconds"]) / r["seconds"]
        worst_m, worst_t = max(worst_m, abs(em)), max(worst_t, abs(et))
        if r["held_back"]:
            worst_held = max(worst_held, abs(em), abs(et))
        m, t = by_shape.get(r["shape_name"], (0.0, 0.0))
        by_shape[r["shape_name"]] = (max(m, abs(em)), max(t, abs(et)))
        print(f"  {('*' if r['held_back'] else '') + r['label']:<40}{pred / 2**20:>10.1f}"
              f"{r['measured_bytes'] / 2**20:>9.1f}{em * 100:>+7.1f}%{pt:>9.3f}{r['seconds']:>8.3f}{et * 100:>+7.1f}%")
    for name, (m, t) in sorted(by_shape.items()):
        print(f"  {name}: worst memory error {m * 100:.1f} %, worst time error {t * 100:.1f} %")
    print(f"* held-back points: worst error {worst_held * 100:.1f} % (memory or time)")
    print(f"{len(every)} points: worst memory error {worst_m * 100:.1f} % (target <= 10 %: "
          f"{'MET' if worst_m <= 0.10 else 'NOT MET'}); worst CPU time error {worst_t * 100:.1f} % "
          f"(target <= 25 %: {'MET' if worst_t <= 0.25 else 'NOT MET'})")
    return {"memory": worst_m, "time": worst_t, "by_shape": by_shape}


def repeatability(first: list[dict], second: list[dict]) -> dict:
    """The points two runs both measured (by label): how far the second run's seconds per step are from
    the first's. Live tensor bytes repeat exactly; a step's time on a shared machine does not, and no
    prediction can be closer to every measurement than the measurements are to each other."""
    before = {r["label"]: r for r in first}
    pairs = [(r["label"], r["seconds"] / before[r["label"]]["seconds"],
              abs(r["measured_bytes"] - before[r["label"]]["measured_bytes"]) / r["measured_bytes"])
             for r in second if r["label"] in before]
    if not pairs:
        return {"points": 0}
    ratios = np.array([x for _, x, _ in pairs])
    off = np.maximum(ratios, 1 / ratios) - 1  # how far apart, as a fraction of the smaller
    return {"points": len(pairs), "median_ratio": float(np.median(ratios)), "min_ratio": float(ratios.min()),
            "max_ratio": float(ratios.max()), "apart_over_25": int((off > 0.25).sum()),
            "apart_over_10": int((off > 0.10).sum()), "memory_apart": max(m for _, _, m in pairs),
            "widest": sorted(pairs, key=lambda t: -max(t[1], 1 / t[1]))[:5]}


def median_of_runs(runs: list[list[dict]]) -> list[dict]:
    """The points every run measured, each timed by the median of the runs' seconds per step (its live
    tensor bytes are the same in every run; the first run's are kept)."""
    by_label = [{r["label"]: r for r in run} for run in runs]
    out = []
    for r in runs[0]:
        if all(r["label"] in run for run in by_label):
            out.append(dict(r, seconds=float(np.median([run[r["label"]]["seconds"] for run in by_label]))))
    return out


def report_repeatability(a: str, b: str) -> None:
    r = repeatability(load(a), load(b))
    if not r["points"]:
        sys.exit(f"{a} and {b} have no point in common (the same shape, stage, plan, length and micro-batch)")
    print(f"{r['points']} points measured in both runs; seconds per step, {b} over {a}: median "
          f"{r['median_ratio']:.2f}, from {r['min_ratio']:.2f} to {r['max_ratio']:.2f}; {r['apart_over_25']} of "
          f"them more than 25 % apart, {r['apart_over_10']} more than 10 %")
    for label, ratio, _ in r["widest"]:
        print(f"  {label:<40}{ratio:>6.2f}")
    print(f"memory (live tensor bytes): at most {r['memory_apart'] * 100:.1f} % apart")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--repeatability"]:
        if len(args) != 3 or not all(Path(a).is_file() for a in args[1:]):
            sys.exit("--repeatability takes two raw files (bench/plan_accuracy.py --raw FILE)")
        report_repeatability(args[1], args[2])
        return
    if args[:1] == ["--cross"]:
        if len(args) < 3 or not all(Path(a).is_file() for a in args[1:]):
            sys.exit("--cross takes a raw file to fit on and one or more to check the fit on "
                     "(bench/plan_accuracy.py --raw FILE)")
        print(f"fitted on {args[1]} (its held-back points left out), checked on {', '.join(args[2:])}")
        cross(load(args[1]), [r for a in args[2:] for r in load(a)])
        return
    checking, median = "--check" in args, "--median" in args
    args = [a for a in args if a not in ("--check", "--median")]
    if median and (not checking or len(args) < 2):
        sys.exit("--median goes with --check and two or more raw files: each point's median over them")
    if not args or any(a.startswith("-") for a in args):
        sys.exit(__doc__)
    missing = [a for a in args if not Path(a).is_file()]
    if missing:
        sys.exit(f"no such file: {', '.join(missing)} (write one with bench/plan_accuracy.py --raw FILE)")
    every = [r for path in args for r in load(path)]
    if not every:
        sys.exit(f"{', '.join(args)}: no measured points in it")
    if median:
        runs = [load(path) for path in args]
        every = median_of_runs(runs)
        print(f"the {len(every)} points all {len(runs)} runs measured ({len(runs[0]) - len(every)} of the first "
              f"run's are missing from another), each timed by its median over the runs")
        if not every:
            sys.exit("no point is in every one of those files")
    if checking:
        check(every)
        return
    points = [r for r in every if not r["held_back"]]  # the grid's * points stay out of the fit
    held_back = [r for r in every if r["held_back"]]
    x = fit_time(points)
    print("TIME['cpu'] =", {k: float(f"{v:.3g}") for k, v in zip(TERMS, x, strict=True)}, "(q4 = dense)")
    print(f"  {'point':<40}{'pred s':>9}{'meas s':>9}{'err':>9}")
    worst, mean = report_time(points, x, show=True)
    print(f"in the fit: worst {worst * 100:.1f} %, mean {mean * 100:.1f} %")
    now_worst, now_mean = report_time(every, np.array([TIME["cpu"][k] for k in TERMS]), show=False)
    print(f"(with the TIME in engine/plan.py now, every point: worst {now_worst * 100:.1f} %, "
          f"mean {now_mean * 100:.1f} %)")
    if held_back:
        worst, mean = report_time(held_back, x, show=False)
        print(f"the {len(held_back)} held-back points, predicted: worst {worst * 100:.1f} %, mean {mean * 100:.1f} %")
    for held in sorted({r["shape_name"] for r in points}):
        xh = fit_time([r for r in points if r["shape_name"] != held])
        worst, mean = report_time([r for r in points if r["shape_name"] == held], xh, show=False)
        print(f"{held} left out of the fit, predicted: worst {worst * 100:.1f} %, mean {mean * 100:.1f} %")
    act = fit_memory(points)
    print("\nACT =", {p: {k: round(float(v), 2) for k, v in c.items()} for p, c in act.items()})
    print(f"memory, in the fit: worst {report_memory(points, act) * 100:.1f} % "
          f"(with the ACT in engine/plan.py now: {report_memory(points, ACT) * 100:.1f} %)")
    if held_back:
        print(f"the held-back points, predicted: worst {report_memory(held_back, act) * 100:.1f} %")
    for held in sorted({r["shape_name"] for r in points}):
        worst = report_memory([r for r in points if r["shape_name"] == held],
                              fit_memory([r for r in points if r["shape_name"] != held]))
        print(f"{held} left out of the memory fit, predicted: worst {worst * 100:.1f} %")


if __name__ == "__main__":
    main()
