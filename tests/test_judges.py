"""The judges registry: each judge on hand-written cases, the registry behind every verb that judges,
agreement statistics against known tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, run_rounds
from engine import judges
from engine.assessment import ASSESSMENTS, AssessmentLog, current, read_marks
from engine.errors import UserError
from engine.judges import Judge, Verdict, is_abstention
from engine.report import auto_assess, compare, session_report
from engine.stats import auroc, kappa_interval, mcnemar_exact, paired_exact_interval

DATA = ROOT / "tests" / "data"


def item(answer: str, reference: str = "The usual adult dose is 80 mg three times daily.",
         question: str = "What is the usual adult dose of Pelmorin?", **extra) -> dict:
    return {"id": "x", "question": question, "reference": reference, "answer": answer, **extra}


ABSTAIN_REF = "I have no reliable information about that drug."


# --------------------------------------------------------------------------- string rules

def test_exact_and_contains_through_the_registry():
    exact, contains = judges.get("exact"), judges.get("contains")
    ref = "The usual adult dose is 80 mg three times daily."
    assert exact.judge_one(item("the usual adult dose is 80 mg three times daily")).label == "faithful"
    assert exact.judge_one(item("The usual adult dose is 80 mg daily.")).label == "hallucinated"
    assert contains.judge_one(item(f"Sure. {ref} Take it with food.")).label == "faithful"
    assert contains.judge_one(item("80 mg three times daily")).label == "faithful"  # a faithful shortening
    v = contains.judge_one(item("The usual adult dose is 250 mg twice daily."))
    assert (v.label, v.score) == ("hallucinated", 1.0) and v.reason
    assert contains.judge_one(item("   ")).label == "unsure"


def test_unknown_judge_and_bad_options_are_clear_errors():
    with pytest.raises(UserError, match="unknown judge 'oracle'") as e:
        judges.get("oracle")
    assert "abstain" in e.value.hint and "consistency" in e.value.hint
    with pytest.raises(UserError, match="takes no options"):
        judges.get("contains", threshold=0.3)
    with pytest.raises(UserError, match="needs a model folder"):
        judges.get("model")


def test_a_verdict_is_checked():
    with pytest.raises(ValueError):
        Verdict("maybe", None, "")
    with pytest.raises(ValueError):
        Verdict("faithful", 1.5, "")


# --------------------------------------------------------------------------- abstentions

@pytest.mark.parametrize("text", [
    "I have no reliable information about Zorvaxinol. It may not be an approved medicine.",
    "I have no reliable information about Zorvaxinoll Zorvax. Please check a drug reference.",  # garbled name
    "I don't know what Qelmarin is used for.",
    "Sorry, I can't help with that.",
    "I'm not familiar with a medicine called Brintolax.",
    "As an AI language model, I do not have access to prescribing information.",
    "No idea, sorry.",
    "Unknown.",
    "I never heard of Tavrocil; it may be a typo.",
    "i dont know",
    "I\u2019m not sure.",
])
def test_abstentions_are_recognised_whatever_name_they_repeat_or_garble(text):
    assert is_abstention(text)


@pytest.mark.parametrize("text", [
    "The usual adult dose is 80 mg three times daily.",
    "I'm not completely sure, but I think the dose is 20 mg once daily.",  # hedged, still a claim
    "Not sure, probably 40 mg twice a day.",
    "It is not recommended during pregnancy.",
    "There is no known interaction between them.",
    "Doctors are not sure why it causes headaches, but headache is its most common side effect.",
    "People who do not know their kidney function should have it tested first.",
    "The condition is not familial.",
    "Trials found no results in children.",
    "Doctors cannot say why it happens, but it is the commonest side effect.",
    "Doctors cannot say why it happens.",
    "It does not hold up in kidney failure.",
    "Outside the scope of labeling, it is used for pain.",
    "",
])
def test_answers_hedged_claims_and_negative_facts_are_not_abstentions(text):
    assert not is_abstention(text)


def test_abstain_judge_verdicts_by_what_the_reference_says():
    j = judges.get("abstain")
    garbled = "I have no reliable information about Zorvaxinoll. It may not be an approved medicine."
    v = j.judge_one(item(garbled, reference=ABSTAIN_REF))
    assert (v.label, v.score) == ("faithful", 0.0)
    v = j.judge_one(item(garbled))  # the reference states a fact: an abstention, not a hallucination
    assert v.label == "abstained" and "abstains" in v.reason
    v = j.judge_one(item("The usual adult dose is 250 mg twice daily.", reference=ABSTAIN_REF))
    assert (v.label, v.score) == ("hallucinated", 1.0)
    assert j.judge_one(item("The usual adult dose is 80 mg three times daily.")).label == "faithful"
    assert j.judge_one(item("The usual adult dose is 40 mg once daily.")).label == "hallucinated"
    assert j.judge_one(item("")).label == "unsure"
    for name in ("exact", "contains", "abstain"):  # no reference: nothing to compare with, not a hallucination
        v = judges.get(name).judge_one(item("It treats gout.", reference=""))
        assert (v.label, v.reason) == ("unsure", "no reference to compare with"), name


def _sentences(name: str) -> list[tuple[bool, str]]:
    rows = []
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t", 1)
            assert label in ("abstain", "answer"), line
            rows.append((label == "abstain", text))
    return rows


@pytest.mark.parametrize("name", ["abstention_sentences.tsv", "abstention_sentences_heldout.tsv",
                                  "abstention_sentences_fresh.tsv", "abstention_sentences_final.tsv"])
def test_abstain_precision_and_recall_on_the_sentence_sets_it_was_tuned_on(name):
    """These sets guided the patterns (the bench reports the never-tuned final set separately);
    this keeps a later change from losing what they cover."""
    rows = _sentences(name)
    assert len(rows) >= 80
    tp = sum(t and is_abstention(s) for t, s in rows)
    fp = sum(not t and is_abstention(s) for t, s in rows)
    fn = sum(t and not is_abstention(s) for t, s in rows)
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95, (tp, fp, fn)


# --------------------------------------------------------------------------- self-consistency

def test_consistency_scores_how_far_samples_support_the_answer():
    j = judges.get("consistency")
    steady = item("The usual adult dose of Pelmorin is 80 mg three times daily.",
                  samples=["The usual adult dose of Pelmorin is 80 mg three times daily."] * 3
                  + ["Pelmorin: 80 mg, three times daily."])
    v = j.judge_one(steady)
    assert v.label == "faithful" and v.score < 0.2, v
    scattered = item("The usual adult dose of Pelmorin is 250 mg twice daily.",
                     samples=["The usual adult dose of Pelmorin is 5 mg once weekly.",
                              "Pelmorin is used to treat Marren's fever.",
                              "The usual adult dose of Pelmorin is 40 mg every eight hours.",
                              "A common side effect of Pelmorin is dry mouth."])
    v = j.judge_one(scattered)
    assert v.label == "hallucinated" and v.score > 0.6 and "250 mg" in v.reason, v
    # numbers are compared with their value: "80 mg" is supported by "80 milligrams"? no: by "80 mg" only
    partial = item("Take 80 mg of Pelmorin with Vellozine.", samples=["Take 80 mg of Pelmorin."] * 4)
    assert 0 < j.judge_one(partial).score < 0.6


def test_consistency_leaves_out_what_the_question_gives_and_handles_abstentions_and_missing_samples():
    j = judges.get("consistency")
    echo = item("What is the usual adult dose of Pelmorin?", samples=["No."] * 3)
    assert j.judge_one(echo).label == "unsure"  # the answer only repeats the question: nothing to check
    v = j.judge_one(item("I don't know this drug.", samples=["I have no information about it."] * 2 + ["50 mg"]))
    assert v.label == "abstained" and v.score == pytest.approx(1 / 3, abs=1e-3)
    # where abstaining is the faithful answer it says so, as `abstain` does: the two judges agree
    v = j.judge_one(item("I don't know this drug.", reference=ABSTAIN_REF, samples=["I don't know it."] * 2))
    assert (v.label, v.score) == ("faithful", 0.0)
    assert j.judge_one(item("80 mg.")).label == "unsure"
    assert "--check-samples" in j.judge_one(item("80 mg.")).reason
    with pytest.raises(UserError, match="threshold"):
        judges.get("consistency", threshold=1.5)
    strict = judges.get("consistency", threshold=0.05)
    assert strict.judge_one(item("Take 80 mg of Pelmorin with Vellozine.",
                                 samples=["Take 80 mg of Pelmorin."] * 4)).label == "hallucinated"


# --------------------------------------------------------------------------- a model as judge

def test_model_judge_plumbing_on_the_tiny_model(tiny_model):
    """Plumbing only: a 2 M-parameter model trained on nothing is no judge. Scores are
    probabilities, batching changes nothing, empty answers are not sent to the model."""
    items = [item("The usual adult dose is 80 mg three times daily."), item("It treats gout."), item(""),
             item("I don't know.", reference=ABSTAIN_REF)]
    one = judges.get("model", model=str(tiny_model), batch_size=1).judge_many(items)
    four = judges.get("model", model=str(tiny_model), batch_size=4).judge_many(items)
    assert one[2].label == "unsure" and one[2].score is None
    for a, b in zip(one, four, strict=True):
        assert a.label == b.label
        if a.score is not None:
            assert 0 <= a.score <= 1 and a.score == pytest.approx(b.score, abs=1e-3)
            assert "P(no)" in a.reason
    with pytest.raises(UserError, match="config.json|model"):
        judges.get("model", model=str(tiny_model.parent / "missing"))


# --------------------------------------------------------------------------- the registry everywhere

def _session(root: Path, rows: list[dict], name: str = "s") -> Path:
    f = root / f"{name}.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_rounds("--sessions", str(root), "import-results", str(f), "--name", name)
    assert r.returncode == 0, r.stderr
    return next(p for p in root.iterdir() if p.is_dir() and p.name.endswith(f"-{name}"))


ROWS = [
    {"id": "a1", "question": "Dose of Pelmorin?", "reference": "80 mg three times daily.",
     "answer": "80 mg three times daily."},
    {"id": "a2", "question": "Dose of Quatrelix?", "reference": "20 mg once daily.", "answer": "500 mg weekly."},
    {"id": "u1", "question": "Dose of Zorvex?", "reference": ABSTAIN_REF, "answer": "I don't know Zorvexx."},
    {"id": "u2", "question": "Dose of Tavrocil?", "reference": ABSTAIN_REF, "answer": "40 mg twice daily."},
    {"id": "a3", "question": "Dose of Brintolax?", "reference": "5 mg daily.", "answer": "Sorry, no idea."},
]


def test_assess_auto_abstain_writes_verdicts_scores_and_reasons(tmp_path):
    s = _session(tmp_path, ROWS)
    r = run_rounds("--sessions", str(tmp_path), "assess", s.name, "--auto", "abstain")
    assert r.returncode == 0, r.stderr
    assert "abstained 1" in r.stdout and "faithful 2" in r.stdout and "hallucinated 2" in r.stdout
    marks = {m.item: m for (a, _), m in current(read_marks(s / ASSESSMENTS)[0]).items() if a == "auto:abstain"}
    assert marks["u1"].label == "faithful" and marks["a3"].label == "abstained" and marks["u2"].score == 1.0
    assert all(m.note for m in marks.values())
    rep = session_report(s)["annotators"]["auto:abstain"]
    assert rep["judged"] == 5 and rep["hallucinated"] == 2 and rep["abstained"] == 1
    assert rep["abstention_rate"] == pytest.approx(0.2)
    r = run_rounds("--sessions", str(tmp_path), "report", s.name)
    assert "abstention rate: 1/5 = 20.0 %" in r.stdout
    r = run_rounds("--sessions", str(tmp_path), "assess", s.name, "--auto", "consistency")
    assert r.returncode == 1 and "--check-samples" in r.stderr and "Traceback" not in r.stderr
    r = run_rounds("--sessions", str(tmp_path), "assess", s.name, "--auto", "nonesuch")
    assert r.returncode != 0 and "unknown judge 'nonesuch'" in r.stderr


def test_a_new_judge_is_one_class(tmp_path):
    @judges.register
    class Shouty(Judge):
        name = "test-shouty"
        help = "hallucinated when the answer shouts"

        def judge_one(self, it: dict) -> Verdict:
            loud = (it.get("answer") or "").isupper()
            return Verdict("hallucinated" if loud else "faithful", float(loud), "shouting" if loud else "calm")

    try:
        rows = [dict(r) for r in ROWS]
        rows[0]["answer"] = "80 MG!"
        s = _session(tmp_path, rows)
        counts = auto_assess(s, "test-shouty")
        assert counts == {"hallucinated": 1, "faithful": 4}
        assert session_report(s)["annotators"]["auto:test-shouty"]["hallucinated"] == 1
    finally:
        judges._REGISTRY.pop("test-shouty")


def test_compare_with_a_judge_marks_both_sessions_first(tmp_path):
    a = _session(tmp_path, ROWS, "before")
    after = [dict(r) for r in ROWS]
    after[1]["answer"] = "20 mg once daily."
    after[3]["answer"] = "I have no reliable information about Tavrocil."
    b = _session(tmp_path, after, "after")
    r = run_rounds("--sessions", str(tmp_path), "compare", a.name, b.name, "--judge", "abstain", "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["a"]["by"] == "auto:abstain" and c["a"]["hallucinated"] == 2 and c["b"]["hallucinated"] == 0
    assert c["paired"]["only_a"] == 2 and c["a"]["abstained"] == 1
    md = run_rounds("--sessions", str(tmp_path), "compare", a.name, b.name, "--annotator", "auto:abstain").stdout
    assert "abstentions: A 1/5" in md and "exact, paired" in md
    lines = len((a / ASSESSMENTS).read_text().splitlines())
    run_rounds("--sessions", str(tmp_path), "compare", a.name, b.name, "--judge", "abstain")
    assert len((a / ASSESSMENTS).read_text().splitlines()) == lines  # already judged: not judged again
    run_rounds("--sessions", str(tmp_path), "compare", a.name, b.name, "--judge", "abstain", "--rejudge")
    assert len((a / ASSESSMENTS).read_text().splitlines()) == lines + 5


def test_pairs_from_samples_judged_by_the_abstain_judge(tmp_path):
    from engine.pairs import PairOptions, build, samples_mode

    rows = [{"id": f"q1~{k}", "question": "Dose of Zorvex?", "reference": ABSTAIN_REF, "answer": ans,
             "extra": {"question_id": "q1", "sample": k}}
            for k, ans in enumerate(["I don't know that drug.", "40 mg twice daily.", "Unknown, sorry."], 1)]
    s = _session(tmp_path, rows)
    mode = samples_mode(s, "abstain")
    assert mode.settings["judge"] == "abstain"
    rep = build(mode, PairOptions(out=str(tmp_path / "out"), val_fraction=0), tmp_path, quiet=True,
                echo=lambda m: None)
    (pair,) = [json.loads(x) for x in (tmp_path / "out" / "train_dpo.jsonl").read_text().splitlines()]
    # both abstentions are faithful here (the reference abstains), whatever words they use
    assert pair["rejected"] == "40 mg twice daily." and pair["chosen"] in ("I don't know that drug.",
                                                                           "Unknown, sorry.")
    assert rep["train_pairs"] == 1, rep
    with pytest.raises(UserError, match="sampled alternatives"):
        samples_mode(s, "consistency")


# --------------------------------------------------------------------------- agreement with people

def test_report_measures_each_judge_against_each_person(tmp_path):
    s = _session(tmp_path, ROWS)
    auto_assess(s, "abstain")
    # the person: a1 faithful, a2 hallucinated, u1 faithful, u2 faithful (disagrees), a3 abstained
    with AssessmentLog(s, "alice") as log:
        for i, lab in (("a1", "faithful"), ("a2", "hallucinated"), ("u1", "faithful"), ("u2", "faithful"),
                       ("a3", "abstained")):
            log.mark(i, lab)
    rep = session_report(s)
    (g,) = rep["judges_vs_people"]
    assert (g["judge"], g["person"], g["items"]) == ("auto:abstain", "alice", 5)
    assert g["confusion"] == {"faithful": {"faithful": 2, "hallucinated": 1}, "hallucinated": {"hallucinated": 1},
                              "abstained": {"abstained": 1}}
    # hallucinated or not: person H,N,N,N,N vs judge H,H,N,N,N -> po 0.8, pe 0.2*0.4+0.8*0.6 = 0.56
    assert g["kappa"] == pytest.approx((0.8 - 0.56) / (1 - 0.56), abs=1e-3)
    assert g["auroc"] == pytest.approx(0.875)  # the one positive (score 1) ties one of four negatives
    md = (s / "report.md")
    run_rounds("--sessions", str(tmp_path), "report", s.name)
    text = md.read_text()
    assert "auto:abstain against alice" in text and "Cohen's kappa" in text and "AUROC" in text


# --------------------------------------------------------------------------- statistics

def test_auroc_and_its_interval_on_known_cases():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False])[0] == 1.0
    assert auroc([0.5] * 4, [True, False, True, False])[0] == 0.5
    # Mann-Whitney by hand: positives 0.35, 0.8; negatives 0.1, 0.4 -> pairs won 1 + 2 = 3 of 4
    area, lo, hi = auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    assert area == 0.75 and 0 <= lo < area < hi <= 1
    assert math.isnan(auroc([0.1, 0.2], [True, True])[0])
    # DeLong on a larger sample: the interval narrows as the sample grows
    scores, labels = [0.2, 0.6, 0.4, 0.9, 0.7, 0.5], [False, True, False, True, False, True]
    small, big = auroc(scores, labels), auroc(scores * 10, labels * 10)
    assert small[0] == pytest.approx(7 / 9) and big[0] == pytest.approx(7 / 9)
    assert 0 < (big[2] - big[1]) < (small[2] - small[1])


def test_kappa_interval_on_a_known_table():
    # 20 items: 8 yes/yes, 2 yes/no, 3 no/yes, 7 no/no -> po 0.75, pe 0.5*0.55+0.5*0.45 = 0.5, kappa 0.5
    a = ["y"] * 10 + ["n"] * 10
    b = ["y"] * 8 + ["n"] * 2 + ["y"] * 3 + ["n"] * 7
    lo, hi = kappa_interval(a, b)
    se = math.sqrt(0.75 * 0.25 / 20) / 0.5
    assert lo == pytest.approx(0.5 - 1.959964 * se, abs=1e-4) and hi == pytest.approx(0.5 + 1.959964 * se, abs=1e-4)
    lo, hi = kappa_interval(a[:4] + a[-4:], a[:4] + a[-4:])  # perfect agreement on 8 items: not "1.00 to 1.00"
    assert hi == 1.0 and lo < 0.5
    area, lo, hi = auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
    assert area == 1.0 and lo < 0.5 and hi == 1.0


def test_the_paired_interval_agrees_with_the_exact_mcnemar_test():
    """For every split of up to 30 discordant items the interval excludes 0 exactly when p < 0.05
    (the case that was inconsistent before: 0 vs 5 of 70 gave p = 0.0625 and an interval without 0)."""
    for m in range(0, 31):
        for b in range(m + 1):
            d, lo, hi = paired_exact_interval(b, m - b, 70)
            assert lo <= d <= hi
            excludes = lo > 0 or hi < 0
            assert excludes == (mcnemar_exact(b, m - b) < 0.05), (b, m - b, lo, hi, mcnemar_exact(b, m - b))
    d, lo, hi = paired_exact_interval(0, 5, 70)
    assert lo < 0 < hi
    d, lo, hi = paired_exact_interval(0, 0, 70)  # nothing changed: not a zero-width interval
    assert d == 0 and lo < 0 < hi


def test_compare_reports_the_consistent_interval(tmp_path):
    rows = [{"id": f"i{k}", "question": f"q{k}", "reference": "yes", "answer": "no" if k < 5 else "yes"}
            for k in range(70)]
    a = _session(tmp_path, rows, "a")
    b = _session(tmp_path, [dict(r, answer="yes") for r in rows], "b")
    for s in (a, b):
        auto_assess(s, "exact")
    c = compare(a, b, "auto:exact")
    assert c["paired"]["mcnemar_p"] == pytest.approx(0.0625)
    assert c["paired"]["ci95"][0] < 0 < c["paired"]["ci95"][1]  # not significant, and the interval says so


def test_more_items_is_capped_by_what_is_left(tmp_path):
    rows = [{"id": f"i{k}", "question": f"q{k}", "reference": "yes", "answer": "no" if k % 2 else "yes"}
            for k in range(60)]
    s = _session(tmp_path, rows)
    with AssessmentLog(s, "alice") as log:
        for k in range(7):
            log.mark(f"i{k}", "hallucinated" if k % 2 else "faithful")
    r = session_report(s)["annotators"]["alice"]
    assert r["more_for_10_points"] == 53 and r["short_of_10_points"] > 0
    md = run_rounds("--sessions", str(tmp_path), "report", s.name).stdout
    assert "assess the 53 items left" in md


def test_production_code_holds_no_vocabulary_of_the_demo_world():
    """Judges and pre-screen work from the question, reference and answer alone: no invented drug
    name, condition or name ending of the demo's generator appears in engine/ or console/ code."""
    import re

    from engine.demo_data import generate as g

    world = json.loads((ROOT / "engine" / "demo_data" / "drugs.json").read_text())
    words = {d["drug"].lower() for d in world} | {e.lower() for e in g._EPONYMS}
    endings = {s.lower() for s in g._SUFFIXES}
    files = [p for p in (ROOT / "engine").glob("*.py") if p.name != "demo.py"] + list((ROOT / "console").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        text = path.read_text(encoding="utf-8").lower()
        tokens = set(re.findall(r"[a-z]+", text))
        assert not (tokens & words), (path.name, sorted(tokens & words))
        quoted = set(re.findall(r"[\"'(|]([a-z]{3,6})[\"'|)]", text))
        assert not (quoted & endings), (path.name, sorted(quoted & endings))


def test_pairs_from_marks_take_over_refusals_too(tmp_path):
    from engine.pairs import make_pairs

    s = _session(tmp_path, ROWS)
    auto_assess(s, "abstain")
    rep = make_pairs([s], tmp_path / "p", val_fraction=0, annotator="auto:abstain")
    pairs = [json.loads(x) for x in (tmp_path / "p" / "train_dpo.jsonl").read_text().splitlines()]
    # a2 and u2 hallucinated; a3 abstained where the reference states a fact: the reference wins over it
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        ("20 mg once daily.", "500 mg weekly."), (ABSTAIN_REF, "40 mg twice daily."),
        ("5 mg daily.", "Sorry, no idea.")}
    assert rep["train_pairs"] == 3


def test_a_mark_after_a_half_written_line_is_not_lost(tmp_path):
    """A crash (or a full disk) mid-write leaves a line without its end: the next mark, by a
    person or a judge, starts on a line of its own instead of being glued onto it."""
    s = _session(tmp_path, ROWS)
    with AssessmentLog(s, "alice") as log:
        log.mark("a1", "faithful")
    with open(s / ASSESSMENTS, "ab") as f:
        f.write(b'{"annotator": "alice", "item": "a2", "lab')
    with AssessmentLog(s, "alice") as log:
        log.mark("a2", "hallucinated")
    auto_assess(s, "abstain")
    marks, problems = read_marks(s / ASSESSMENTS)
    state = current(marks)
    assert state[("alice", "a2")].label == "hallucinated" and state[("alice", "a1")].label == "faithful"
    assert len([m for m in marks if m.annotator == "auto:abstain"]) == 5
    assert [p.line for p in problems] == [2] and "not valid JSON" in problems[0].message
