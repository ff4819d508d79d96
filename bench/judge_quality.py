"""How far each automatic judge can be trusted: agreement with ground truth.

1. On the demo's SFT and DPO answers to the held-out test set: each judge's verdicts against the
   truth the demo's invented world gives (an answerable question is answered correctly when the
   answer states the drug's true fact; a question about a drug no training file names is
   answered faithfully only by an abstention). Cohen's kappa on hallucinated / not, and the
   AUROC of the judge's score, with 95 % intervals.
2. The `abstain` judge's precision and recall on sentence sets written for it by separate
   authors, none of them in the demo's phrasing (tests/data/abstention_sentences*.tsv). The
   sets were written one after another by authors who saw neither the judge nor the other
   sets; each was measured once with the patterns frozen (that first figure is kept below),
   and all but the last then guided the patterns. The last set's figure is the honest one.

Targets: `consistency` AUROC >= 0.85 on the SFT answers; `abstain` precision and recall >= 0.95.

    python bench/judge_quality.py [--run DIR]   # DIR: a demo run (bench/demo_pipeline.py --keep DIR);
                                                # without it, one demo pipeline runs first (about 15 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (file, what, (precision, recall) when first measured with the patterns frozen, before any tuning on it)
SETS = [("abstention_sentences.tsv", "dev (written with the patterns)", None),
        ("abstention_sentences_heldout.tsv", "held-out 1 (then tuned on)", (0.977, 0.717)),
        ("abstention_sentences_fresh.tsv", "held-out 2 (then tuned on)", (1.000, 0.760)),
        ("abstention_sentences_final.tsv", "held-out 3 (then tuned on)", (1.000, 0.460)),
        ("abstention_sentences_last.tsv", "held-out 4 (never tuned on)", None)]


def truth(row: dict, facts: dict[str, dict]) -> str:
    """The demo world's ground truth for one answer (bench code: it may know the demo's world)."""
    from engine.demo_data.generate import ABSTAIN
    from engine.text import normalise

    extra = row.get("extra") or {}
    answer = normalise(row.get("answer"))
    # the demo's abstention, whole or cut short by the token limit; anything added to it is a claim
    abstains = len(answer) >= 20 and normalise(ABSTAIN).startswith(answer)
    if not extra.get("answerable"):
        return "faithful" if abstains else "hallucinated"
    if abstains:
        return "abstained"
    value = normalise(facts[extra["drug"]][extra["fact"]])
    return "faithful" if value in answer else "hallucinated"


def agreement(session: Path, facts: dict, judge: str) -> dict:
    from engine.assessment import ASSESSMENTS, labels_by_item, read_marks
    from engine.session.records import read_results
    from engine.stats import auroc, cohen_kappa, kappa_interval

    rows = {r["id"]: r for r in read_results(session)}
    marks = labels_by_item(read_marks(session / ASSESSMENTS)[0], f"auto:{judge}")
    pairs = [(truth(rows[i], facts), d[f"auto:{judge}"]) for i, d in marks.items() if i in rows]
    decided = [(t, m) for t, m in pairs if m.label != "unsure"]
    t_bin = [t == "hallucinated" for t, _ in decided]
    m_bin = [m.label == "hallucinated" for _, m in decided]
    kappa = cohen_kappa(t_bin, m_bin) if decided else float("nan")
    klo, khi = kappa_interval(t_bin, m_bin) if decided else (float("nan"),) * 2
    scored = [(t, m.score) for t, m in pairs if m.score is not None]
    area, alo, ahi = auroc([s for _, s in scored], [t == "hallucinated" for t, _ in scored]) if scored \
        else (float("nan"),) * 3
    return {"items": len(pairs), "unsure": len(pairs) - len(decided), "kappa": kappa, "kappa_ci": (klo, khi),
            "auroc": area, "auroc_ci": (alo, ahi), "truth_hallucinated": sum(t == "hallucinated" for t, _ in pairs)}


def _num(x: float, ci: tuple[float, float]) -> str:
    return "   n/a            " if x != x else f"{x:5.2f} ({ci[0]:.2f}-{ci[1]:.2f})"


def sentence_sets() -> list[tuple[str, str, int, float, float]]:
    from engine.judges import is_abstention

    out = []
    for name, what, _ in SETS:
        path = ROOT / "tests" / "data" / name
        rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
        tp = sum(lab == "abstain" and is_abstention(t) for lab, t in rows)
        fp = sum(lab == "answer" and is_abstention(t) for lab, t in rows)
        fn = sum(lab == "abstain" and not is_abstention(t) for lab, t in rows)
        out.append((what, name, len(rows), tp / (tp + fp) if tp + fp else float("nan"),
                    tp / (tp + fn) if tp + fn else float("nan")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", metavar="DIR", help="a demo run's sessions folder (has demo-summary.json)")
    args = ap.parse_args()
    from engine.demo import DEMO_DATA, DemoConfig, run_pipeline
    from engine.report import auto_assess

    tmp = None
    if args.run:
        run = Path(args.run)
    else:
        tmp = tempfile.TemporaryDirectory()
        run = Path(tmp.name)
        run_pipeline(run, DemoConfig(), echo=lambda m: print(m, flush=True))
    summary = json.loads((run / "demo-summary.json").read_text())
    facts = {d["drug"]: d for d in json.loads((DEMO_DATA / "drugs.json").read_text()) if d["pool"] == "known"}
    print(f"judges against the demo world's ground truth (run {run}, seed {summary['config']['seed']})")
    print(f"{'answers':<6} {'judge':<12} {'items':>5} {'unsure':>6}  {'kappa (95 % CI)':<18}  AUROC (95 % CI)")
    results = {}
    for which in ("eval_sft", "eval_dpo"):
        session = run / summary["sessions"][which]
        for judge in ("exact", "contains", "abstain", "consistency"):  # this code's verdicts, from the stored answers
            auto_assess(session, judge)
        for judge in ("exact", "contains", "abstain", "consistency"):
            r = agreement(session, facts, judge)
            results[(which, judge)] = r
            print(f"{which[5:]:<6} {judge:<12} {r['items']:>5} {r['unsure']:>6}  {_num(r['kappa'], r['kappa_ci'])}  "
                  f"{_num(r['auroc'], r['auroc_ci'])}   (truth: {r['truth_hallucinated']} hallucinated)")
    print()
    print("the `abstain` judge on sentence sets by separate authors")
    sets = sentence_sets()
    for (what, name, n, p, rcl), (_, _, first) in zip(sets, SETS, strict=True):
        was = f"   first measured: {first[0]:.3f} / {first[1]:.3f}" if first else ""
        print(f"  {what:<30} {n:>4} sentences  precision {p:.3f}  recall {rcl:.3f}{was}   ({name})")
    cons = results[("eval_sft", "consistency")]["auroc"]
    final_p, final_r = sets[-1][3], sets[-1][4]
    print()
    print(f"consistency AUROC on the SFT answers: {cons:.3f} (target >= 0.85: {'MET' if cons >= 0.85 else 'NOT MET'})")
    ok = final_p >= 0.95 and final_r >= 0.95
    print(f"abstain on the set never tuned on: precision {final_p:.3f}, recall {final_r:.3f} (target >= 0.95 each: "
          f"{'MET' if ok else 'NOT MET'})")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
