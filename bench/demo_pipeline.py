"""The demo's loop, full size, measured: does DPO against hallucinations work on this CPU?

Runs the whole demo pipeline (small model: SFT -> evaluation -> an assessment round marked by
the `abstain` judge -> pairs -> DPO -> evaluation -> comparison) once per seed, each in its
own sessions folder; a seed sets the model's initial weights, the data order and the sampling.
Prints one row per seed: SFT and DPO hallucination rates on the held-out test set with 95 %
Wilson intervals, abstention rates, the exact McNemar p on the shared items, the change in
answerable accuracy, the wall time and the judge.

Target, for every seed: hallucination down by >= 30 points with p < 0.01, answerable accuracy
down by at most 10 points, at most 15 minutes on 2 cores. The design (data, abstention wording,
amounts, DPO plan and settings) was fixed before measuring; nothing is tuned on the test set.

    python bench/demo_pipeline.py [--seeds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rate(r: dict) -> str:
    return f"{100 * r['rate']:.1f} % ({100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f})"


def _abst(s: dict, which: str) -> str:
    """abstentions on unseen drugs (faithful there) / on answerable questions (where the reference states a fact)"""
    acc = s[f"answerable_{which}"]
    return f"{acc['unanswerable']['faithful']}/{acc['unanswerable']['items']} {acc['answerable']['abstained']}/" \
           f"{acc['answerable']['items']}"


def row(seed: int, s: dict) -> str:
    c = s["comparison"]
    return (f"{seed:>4}  {_rate(c['a']):<19} {_rate(c['b']):<19} {_abst(s, 'sft'):>11} {_abst(s, 'dpo'):>11}  "
            f"{s['mcnemar_p']:<9.2g} {s['answerable_accuracy_change_points']:>+7.1f}  "
            f"{s['wall_seconds'] / 60:>5.1f}  {s['judge']:<8} {'MET' if s['target_met'] else 'NOT MET'}")


HEADER = (f"{'seed':>4}  {'SFT halluc. (95% CI)':<19} {'DPO halluc. (95% CI)':<19} {'SFT abst.':>11} "
          f"{'DPO abst.':>11}  {'McNemar p':<9} {'ans.acc':>7}  {'min':>5}  {'judge':<8} target\n"
          f"{'':<46}(abstentions: on the 30 unseen drugs, then on the 40 answerable questions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="run the pipeline for seeds 0..N-1 (default 1)")
    ap.add_argument("--keep", metavar="DIR", help="write each seed's sessions to DIR/seedN instead of a temporary "
                                                  "folder (bench/judge_quality.py --run DIR/seedN reads them)")
    args = ap.parse_args()
    from engine.demo import DemoConfig, run_pipeline

    rows, met = [], 0
    tmp = tempfile.TemporaryDirectory() if not args.keep else None
    base = Path(args.keep or tmp.name)
    for seed in range(args.seeds):
        summary = run_pipeline(base / f"seed{seed}", DemoConfig(seed=seed), echo=lambda m: print(m, flush=True))
        rows.append(row(seed, summary))
        met += bool(summary["target_met"])
        print("\n".join(["---", HEADER, *rows]), flush=True)
    print("---")
    print(HEADER)
    print("\n".join(rows))
    print(f"target (every seed: hallucination down >= 30 points, McNemar p < 0.01, answerable accuracy down <= 10 "
          f"points, <= 15 min): {'MET' if met == len(rows) else 'NOT MET'} ({met}/{len(rows)} seeds)")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
