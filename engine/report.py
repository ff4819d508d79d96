"""From marks to numbers: automatic marks, reports, comparisons (pairs from marks: engine.pairs)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from engine import judges
from engine.assessment import ASSESSMENTS, JUDGED, AssessmentLog, Mark, labels_by_item, read_marks
from engine.errors import UserError
from engine.evaluate import eval_session
from engine.session import file_mode, write_json_atomic
from engine.session.layout import REPORT_JSON, REPORT_MD, USED_FOR_PAIRS
from engine.session.records import read_results
from engine.stats import (
    auroc,
    cohen_kappa,
    format_rate,
    items_for_half_width,
    kappa_interval,
    mcnemar_exact,
    paired_exact_interval,
    unpaired_difference_interval,
    wilson_interval,
)
from engine.text import fingerprint
from engine.text import normalise as _norm

# --------------------------------------------------------------------------- automatic marks

def auto_assess(session: Path, rule: str, judge_options: dict | None = None, echo=None) -> dict:
    """Mark every answer of an eval session with a judge from the registry (annotator ``auto:NAME``,
    with the judge's score and reason); returns the count of each verdict."""
    eval_session(session)
    results = read_results(session)
    if not results:
        raise UserError(f"{session.name} has no results yet", hint="run `rounds eval` first")
    judge = judges.get(rule, **(judge_options or {}))
    if judge.needs_samples and not any(r.get("samples") for r in results):
        raise UserError(f"the {rule!r} judge compares each answer with other answers sampled for the same "
                        f"question, and {session.name} has none",
                        field="--auto", hint="evaluate with --check-samples N (e.g. 4), then judge that session")
    progress = (lambda i, n: echo(f"judged {i}/{n}")) if echo else None
    verdicts = judge.judge_many(results, progress)
    with AssessmentLog(session, judges.annotator_name(rule)) as log:
        log.mark_many([(r["id"], v.label, v.reason, v.score) for r, v in zip(results, verdicts, strict=True)])
    return dict(Counter(v.label for v in verdicts))


# --------------------------------------------------------------------------- one session

def _load(session: Path) -> tuple[dict, dict[str, dict], list[Mark], list[str]]:
    meta = eval_session(session)
    damaged: list[str] = []
    items = {r["id"]: r for r in read_results(session, damaged)}
    marks, problems = read_marks(session / ASSESSMENTS)
    notes = damaged[:20] + ([f"... and {len(damaged) - 20} more damaged lines"] if len(damaged) > 20 else [])
    notes += [f"{session / ASSESSMENTS}, line {p.line}: {p.message}" for p in problems]
    unknown = sorted({m.item for m in marks if m.item not in items})
    if unknown:
        notes.append(f"{len(unknown)} marked item(s) are not in the results and were ignored: "
                     + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    marks = [m for m in marks if m.item in items]
    return meta, items, marks, notes


def _rate(k: int, n: int, abstained: int = 0, left: int | None = None) -> dict:
    """The hallucination rate k/n (n counts hallucinated, faithful and abstained items), the
    abstention rate beside it, and how many more items a ±10-point interval needs, capped by
    the ``left`` items not yet assessed."""
    lo, hi = wilson_interval(k, n)
    need = items_for_half_width(k / n if n else 0.5, 0.10)
    more = max(0, need - n)
    alo, ahi = wilson_interval(abstained, n)
    out = {"hallucinated": k, "judged": n, "rate": k / n if n else None, "ci95": [lo, hi],
           "text": format_rate(k, n), "items_for_10_points": need, "more_for_10_points": more,
           "abstained": abstained, "abstention_rate": abstained / n if n else None, "abstention_ci95": [alo, ahi],
           "abstention_text": format_rate(abstained, n)}
    if left is not None and more > left:
        out["more_for_10_points"] = left
        out["short_of_10_points"] = more - left  # even every item left cannot reach ±10 points
    return out


def _more_text(r: dict) -> str:
    if not r["more_for_10_points"]:
        return "the interval is already within ±10 points" if not r.get("short_of_10_points") else \
            f"every item is assessed; ±10 points would need about {r['short_of_10_points']} more items than there are"
    if r.get("short_of_10_points"):
        return (f"assess the {r['more_for_10_points']} items left (±10 points would need about "
                f"{r['short_of_10_points']} more than there are)")
    return f"assess about {r['more_for_10_points']} more items for ±10 points"


def consensus(by_annotator: dict[str, Mark]) -> str | None:
    """One label for an item from its annotators' current marks: the majority of the
    hallucinated/faithful/abstained votes; a tie or only 'unsure' gives None (not judged)."""
    votes = Counter(m.label for m in by_annotator.values() if m.label in JUDGED)
    if not votes:
        return None
    (top, n), *rest = votes.most_common()
    return None if rest and rest[0][1] == n else top


def truth_marks(by_annotator: dict[str, Mark]) -> dict[str, Mark]:
    """An item's marks that count: the people's where any person judged it (people stay the
    truth), else the automatic judges'. Pooled rates and the default consensus both use it."""
    people = {a: m for a, m in by_annotator.items() if not judges.is_automatic(a)}
    return people or by_annotator


def _binary(label: str) -> str:
    return "hallucinated" if label == "hallucinated" else "not hallucinated"


def judge_agreement(by_item: dict[str, dict[str, Mark]], judge: str, person: str) -> dict | None:
    """How far an automatic judge agrees with a person on the items both judged: the confusion
    table (the person's label -> the judge's), Cohen's kappa on hallucinated / not hallucinated
    with its interval, and the AUROC of the judge's score against the person's marks."""
    shared = [(d[person], d[judge]) for d in by_item.values()
              if person in d and judge in d and d[person].label in JUDGED and d[judge].label in (*JUDGED, "unsure")]
    if not shared:
        return None
    table: dict[str, dict[str, int]] = {}
    for h, j in shared:
        row = table.setdefault(h.label, {})
        row[j.label] = row.get(j.label, 0) + 1
    decided = [(h, j) for h, j in shared if j.label in JUDGED]
    human = [_binary(h.label) for h, _ in decided]
    auto = [_binary(j.label) for _, j in decided]
    kappa = cohen_kappa(human, auto) if decided else float("nan")
    klo, khi = kappa_interval(human, auto) if decided else (float("nan"), float("nan"))
    agree = sum(x == y for x, y in zip(human, auto, strict=True))
    scored = [(h, j) for h, j in shared if j.score is not None]
    area, alo, ahi = auroc([j.score for _, j in scored], [h.label == "hallucinated" for h, _ in scored]) \
        if scored else (float("nan"),) * 3

    def num(x: float) -> float | None:
        return None if x != x else round(x, 3)

    return {"judge": judge, "person": person, "items": len(shared), "decided": len(decided),
            "judge_unsure": len(shared) - len(decided), "confusion": table,
            "agreement": round(agree / len(decided), 3) if decided else None,
            "kappa": num(kappa), "kappa_ci95": [num(klo), num(khi)],
            "scored": len(scored), "auroc": num(area), "auroc_ci95": [num(alo), num(ahi)]}


def session_report(session: Path) -> dict:
    meta, items, marks, notes = _load(session)
    by_item = labels_by_item(marks)
    annotators = sorted({a for d in by_item.values() for a in d})
    per: dict[str, dict] = {}
    for ann in annotators:
        mine = {i: d[ann] for i, d in by_item.items() if ann in d}
        labels = Counter(m.label for m in mine.values())
        k, n = labels["hallucinated"], sum(labels[x] for x in JUDGED)
        cats = Counter(c for m in mine.values() if m.label == "hallucinated" for c in m.categories)
        sev = Counter(m.severity or "unset" for m in mine.values() if m.label == "hallucinated")
        per[ann] = {**_rate(k, n, labels["abstained"], left=len(items) - len(mine)), "assessed": len(mine),
                    "unsure": labels["unsure"], "categories": dict(cats), "severity": dict(sev),
                    "automatic": judges.is_automatic(ann)}
    all_marks = [m for d in by_item.values() for m in truth_marks(d).values()]
    k = sum(m.label == "hallucinated" for m in all_marks)
    n = sum(m.label in JUDGED for m in all_marks)
    kappas = []
    for i, a in enumerate(annotators):
        for b in annotators[i + 1:]:
            shared = [it for it, d in by_item.items() if a in d and b in d
                      and d[a].label in JUDGED and d[b].label in JUDGED]
            if shared:
                kappa = cohen_kappa([by_item[s][a].label for s in shared], [by_item[s][b].label for s in shared])
                kappas.append({"annotators": [a, b], "items": len(shared),
                               "kappa": None if kappa != kappa else round(kappa, 3)})
    people = [a for a in annotators if not judges.is_automatic(a)]
    agreement = [r for j in annotators if judges.is_automatic(j) for p in people
                 if (r := judge_agreement(by_item, j, p)) is not None]
    disagreements = sorted(it for it, d in by_item.items()
                           if len({m.label for m in d.values() if m.label in JUDGED}) > 1)
    unsure = sorted(it for it, d in by_item.items() if any(m.label == "unsure" for m in d.values()))
    return {"session": Path(session).name, "items": len(items), "assessed_items": len(by_item), "annotators": per,
            "pooled": _rate(k, n, sum(m.label == "abstained" for m in all_marks)), "kappa": kappas,
            "judges_vs_people": agreement, "disagreements": disagreements, "unsure": unsure,
            "held_out": bool(meta.get("held_out")), "notes": notes}


def _ci(pair: list) -> str:
    return "" if pair[0] is None else f" (95 % CI {pair[0]:.2f} to {pair[1]:.2f})"


def agreement_markdown(g: dict) -> list[str]:
    labels = [x for x in (*JUDGED, "unsure") if any(x in row for row in g["confusion"].values())]
    lines = [f"### {g['judge']} against {g['person']} ({g['items']} items both judged)", "",
             "| " + g["person"] + " \\ " + g["judge"] + " | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for h in JUDGED:
        if h in g["confusion"]:
            lines.append(f"| {h} | " + " | ".join(str(g["confusion"][h].get(x, 0)) for x in labels) + " |")
    lines.append("")
    if g["decided"]:
        kappa = "undefined (no variation)" if g["kappa"] is None else f"{g['kappa']:.2f}{_ci(g['kappa_ci95'])}"
        lines.append(f"- hallucinated or not: agreement {100 * g['agreement']:.0f} % on {g['decided']} items, "
                     f"Cohen's kappa {kappa}")
    if g["judge_unsure"]:
        lines.append(f"- the judge was unsure on {g['judge_unsure']} of them")
    if g["scored"]:
        area = "undefined (one class only)" if g["auroc"] is None else f"{g['auroc']:.2f}{_ci(g['auroc_ci95'])}"
        lines.append(f"- AUROC of the judge's score against the person's 'hallucinated': {area} "
                     f"on {g['scored']} items (DeLong)")
    return lines + [""]


def agreement_section(rep: dict) -> list[str]:
    lines = ["## How far the automatic judges can be trusted here", "",
             "Each automatic judge against each person, on the items both judged: a person's marks are the "
             "truth; the judge's verdict on the rest is only as good as this.", ""]
    for g in rep["judges_vs_people"]:
        lines += agreement_markdown(g)
    return lines


def report_markdown(rep: dict) -> str:
    lines = [f"# Hallucination report: {rep['session']}", "",
             f"{rep['items']} items, {rep['assessed_items']} with at least one mark.", ""]
    if not rep["annotators"]:
        lines.append("No marks yet: assess with `rounds assess` (or `rounds assess --auto abstain`).")
    # people first, then how far each judge agrees with them, then the judges' own rates
    ordered = sorted(rep["annotators"].items(), key=lambda kv: bool(kv[1].get("automatic")))
    for n_shown, (ann, r) in enumerate(ordered):
        if r.get("automatic") and rep.get("judges_vs_people") and not ordered[n_shown - 1][1].get("automatic"):
            lines += agreement_section(rep)
        lines += [f"## {ann}" + (" (automatic judge)" if r.get("automatic") else ""), "",
                  f"- hallucination rate: {r['text']}"]
        if r["abstained"]:
            lines.append(f"- abstention rate: {r['abstention_text']} (declined to answer; not counted as "
                         "hallucinated or correct)")
        lines += [f"- assessed {r['assessed']} items ({r['unsure']} unsure, not counted in the rate)",
                  f"- {_more_text(r)}"]
        if r["categories"]:
            lines.append("- categories: " + ", ".join(f"{k} {v}" for k, v in sorted(r["categories"].items())))
        if any(k != "unset" for k in r["severity"]):
            lines.append("- severity: " + ", ".join(f"{k} {v}" for k, v in sorted(r["severity"].items())))
        lines.append("")
    if len(rep["annotators"]) > 1:
        lines += ["## All annotators pooled", "", f"- {rep['pooled']['text']}", ""]
    for k in rep["kappa"]:
        kappa = "undefined (no variation)" if k["kappa"] is None else f"{k['kappa']:.3f}"
        lines.append(f"- Cohen's kappa {k['annotators'][0]} vs {k['annotators'][1]}: {kappa} on {k['items']} items")
    if rep["disagreements"]:
        lines.append(f"- disagreements on {len(rep['disagreements'])} items: {', '.join(rep['disagreements'][:20])}")
    if rep["unsure"]:
        lines.append(f"- marked unsure: {', '.join(rep['unsure'][:20])}")
    for n in rep["notes"]:
        lines.append(f"- note: {n}")
    lines.append("")
    lines.append("Rates count items judged hallucinated, faithful or abstained; 95 % intervals are Wilson score "
                 "intervals; kappa's interval is Cohen's large-sample one.")
    return "\n".join(lines) + "\n"


def write_report(session: Path) -> tuple[dict, str]:
    rep = session_report(session)
    md = report_markdown(rep)
    write_json_atomic(session / REPORT_JSON, rep, file_mode(session))
    (session / REPORT_MD).write_text(md, encoding="utf-8")
    (session / REPORT_MD).chmod(file_mode(session))
    return rep, md


# --------------------------------------------------------------------------- two sessions

def item_labels(session: Path, annotator: str | None) -> tuple[dict[str, str], dict[str, dict], str]:
    """item -> hallucinated|faithful|abstained for one session, by one annotator or by consensus."""
    _, items, marks, _ = _load(session)
    by_item = labels_by_item(marks)
    annotators = sorted({a for d in by_item.values() for a in d})
    if annotator:
        if annotator not in annotators:
            raise UserError(f"{session.name} has no marks by {annotator!r}",
                            hint=f"annotators there: {', '.join(annotators) or 'none'}")
        chosen = {i: d[annotator].label for i, d in by_item.items() if annotator in d}
        who = annotator
    else:
        people = [a for a in annotators if not judges.is_automatic(a)]
        chosen = {i: consensus(truth_marks(d)) for i, d in by_item.items()}
        voters = people or annotators
        who = voters[0] if len(voters) == 1 else "consensus of " + ", ".join(voters)
        if people and len(people) < len(annotators):
            who += " (automatic judges only where no person judged)"
    return {i: lab for i, lab in chosen.items() if lab in JUDGED}, items, who


def _used_fingerprints(root: Path) -> set[str]:
    used: set[str] = set()
    for f in root.glob(f"*/{USED_FOR_PAIRS}"):
        try:
            used.update(json.loads(f.read_text()).get("questions", []))
        except (OSError, json.JSONDecodeError):
            continue
    return used


def compare(a: Path, b: Path, annotator: str | None = None) -> dict:
    la, items_a, who_a = item_labels(a, annotator)
    lb, items_b, who_b = item_labels(b, annotator)
    ka, na = sum(v == "hallucinated" for v in la.values()), len(la)
    kb, nb = sum(v == "hallucinated" for v in lb.values()), len(lb)
    aa, ab = sum(v == "abstained" for v in la.values()), sum(v == "abstained" for v in lb.values())
    out = {"a": {"session": a.name, "by": who_a, **_rate(ka, na, aa)},
           "b": {"session": b.name, "by": who_b, **_rate(kb, nb, ab)}, "warnings": []}
    shared = sorted(set(la) & set(lb))
    if shared:
        t = Counter((la[i] == "hallucinated", lb[i] == "hallucinated") for i in shared)
        both, only_a, only_b, neither = t[(True, True)], t[(True, False)], t[(False, True)], t[(False, False)]
        diff, lo, hi = paired_exact_interval(only_a, only_b, len(shared))
        out["paired"] = {"items": len(shared), "both_hallucinated": both, "only_a": only_a, "only_b": only_b,
                         "neither": neither, "mcnemar_p": mcnemar_exact(only_a, only_b),
                         "difference": diff, "ci95": [lo, hi], "interval": "exact, conditional on the discordant "
                         "items (agrees with the exact McNemar test)"}
        questions_differ = sum(_norm(items_a[i]["question"]) != _norm(items_b[i]["question"]) for i in shared)
        if questions_differ:
            out["warnings"].append(f"{questions_differ} shared item ids have different questions: are these the "
                                   "same test set?")
    else:
        diff, lo, hi = unpaired_difference_interval(ka, na, kb, nb)
        out["unpaired"] = {"difference": diff, "ci95": [lo, hi]}
        out["warnings"].append("the sessions share no judged items: this is an unpaired comparison, much weaker "
                               "than a paired one on the same test items")
    used = _used_fingerprints(a.parent) | _used_fingerprints(b.parent)
    leaked = sorted({i for i, r in list(items_a.items()) + list(items_b.items())
                     if fingerprint(r["question"]) in used})
    if leaked:
        out["warnings"].append(f"{len(leaked)} compared items were used to build training pairs "
                               f"({', '.join(leaked[:5])}{' ...' if len(leaked) > 5 else ''}): their rates are "
                               "not a held-out measurement")
    return out


def compare_markdown(c: dict) -> str:
    lines = [f"# Comparison: {c['a']['session']} (A) vs {c['b']['session']} (B)", "",
             f"- A ({c['a']['by']}): {c['a']['text']}", f"- B ({c['b']['by']}): {c['b']['text']}"]
    if "paired" in c:
        p = c["paired"]
        lines += [f"- on the {p['items']} items judged in both: hallucinated in A only {p['only_a']}, in B only "
                  f"{p['only_b']}, in both {p['both_hallucinated']}, in neither {p['neither']}",
                  f"- exact McNemar p = {p['mcnemar_p']:.3g}",
                  f"- difference A - B = {100 * p['difference']:+.1f} points (95 % CI {100 * p['ci95'][0]:+.1f} to "
                  f"{100 * p['ci95'][1]:+.1f}, exact, paired: it excludes 0 exactly when p < 0.05)"]
        if c["a"]["abstained"] or c["b"]["abstained"]:
            lines.append(f"- abstentions: A {c['a']['abstention_text']}, B {c['b']['abstention_text']}")
    else:
        u = c["unpaired"]
        lines.append(f"- difference A - B = {100 * u['difference']:+.1f} points (95 % CI {100 * u['ci95'][0]:+.1f} "
                     f"to {100 * u['ci95'][1]:+.1f}, Newcombe, unpaired)")
    for w in c["warnings"]:
        lines.append(f"- WARNING: {w}")
    return "\n".join(lines) + "\n"


def write_compare(a: Path, b: Path, annotator: str | None = None) -> tuple[dict, str]:
    c = compare(a, b, annotator)
    md = compare_markdown(c)
    for s, other in ((a, b), (b, a)):
        write_json_atomic(s / f"compare-{other.name}.json", c, file_mode(s))
        (s / f"compare-{other.name}.md").write_text(md, encoding="utf-8")
        (s / f"compare-{other.name}.md").chmod(file_mode(s))
    return c, md
