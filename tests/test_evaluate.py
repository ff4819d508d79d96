"""Evaluation, import, pre-screen, marks, auto-assessment, report, compare and pairs, end to end on CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import ROOT, run_rounds
from engine.assessment import ASSESSMENTS, AssessmentLog, current, read_marks
from engine.errors import SessionLockedError, UserError
from engine.pairs import make_pairs
from engine.prescreen import flags
from engine.report import compare, session_report
from engine.session import EventTail, read_session_json
from engine.session.layout import RESULTS
from engine.session.records import read_results

DEMO = ROOT / "engine" / "demo_data"


def only(root: Path) -> Path:
    (s,) = [p for p in root.iterdir() if (p / "session.json").exists()]
    return s


def imported(tmp_path: Path, rows: list[dict], name: str, *extra: str) -> Path:
    f = tmp_path / f"{name}.csv"
    with open(f, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["item", "Question", "gold", "output"])
        w.writeheader()
        w.writerows(rows)
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "import-results", str(f), "--id", "item", "--question", "Question",
                   "--reference", "gold", "--answer", "output", "--name", name, *extra)
    assert r.returncode == 0, r.stderr
    return next(p for p in root.iterdir() if p.name.endswith(name))


def rows(n: int, wrong: set[int]) -> list[dict]:
    return [{"item": f"q{i}", "Question": f"What is the dose of Drug{i}?", "gold": f"Drug{i} is {i} mg daily.",
             "output": f"Drug{i} is {i + 100} mg daily." if i in wrong else f"Drug{i} is {i} mg daily."}
            for i in range(n)]


# --------------------------------------------------------------------------- eval


def test_eval_writes_results_progress_and_flags(tmp_path, tiny_model):
    root = tmp_path / "s"
    r = run_rounds("--sessions", str(root), "eval", "--model", str(tiny_model), "--data", str(DEMO / "test.jsonl"),
                   "--max-examples", "10", "--batch-size", "4", "--max-new-tokens", "12", "--held-out")
    assert r.returncode == 0, r.stderr
    s = only(root)
    meta = read_session_json(s)
    assert meta["kind"] == "eval" and meta["status"] == "finished" and meta["held_out"] is True
    res = read_results(s)
    assert len(res) == 10 and len({x["id"] for x in res}) == 10
    for x in res:
        assert {"id", "question", "reference", "answer", "model", "generation", "flags", "truncated"} <= set(x)
        assert x["generation"]["max_new_tokens"] == 12 and x["extra"]["drug"]
    with open(s / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 10
    progress = [e for e in EventTail(s / "events.jsonl") if e["type"] == "progress"]
    assert progress[-1]["step"] == 10 and progress[-1]["max_steps"] == 10 and "tokens_per_second" in progress[-1]


def test_eval_resumes_from_the_first_missing_item(tmp_path, tiny_model):
    root = tmp_path / "s"
    args = ["--sessions", str(root), "eval", "--model", str(tiny_model), "--data", str(DEMO / "test.jsonl"),
            "--max-examples", "8", "--batch-size", "4", "--max-new-tokens", "8"]
    assert run_rounds(*args).returncode == 0
    s = only(root)
    lines = (s / RESULTS).read_bytes().splitlines(keepends=True)
    (s / RESULTS).write_bytes(b"".join(lines[:3]) + lines[3][:20])  # a crash mid-write
    r = run_rounds("--sessions", str(root), "eval", "--resume", s.name)
    assert r.returncode == 0, r.stderr
    res = read_results(s)
    assert sorted(x["id"] for x in res) == sorted(json.loads(x)["id"] for x in lines)
    resumed = [e for e in EventTail(s / "events.jsonl") if e.get("kind") == "resumed"]
    assert resumed and resumed[-1]["done"] == 3 and resumed[-1]["remaining"] == 5


def test_batched_generation_gives_the_same_answers_as_one_at_a_time(tiny_model):
    from engine.evaluate import generate_batch, load_for_generation

    tok, model, device = load_for_generation(str(tiny_model), None, "cpu")
    prompts = [json.loads(x)["question"] for x in (DEMO / "test.jsonl").read_text().splitlines()[:6]]
    batched = generate_batch(tok, model, device, prompts, 10)
    single = [generate_batch(tok, model, device, [p], 10)[0] for p in prompts]
    assert [b[0] for b in batched] == [s[0] for s in single]


# --------------------------------------------------------------------------- pre-screen


def test_prescreen_flags_numbers_terms_and_shape():
    f = flags("Zorvane is used at 80 mg twice daily, like Quellimab.", reference="Zorvane is dosed at 40 mg.",
              question="What is the dose of Zorvane?")
    assert f["numbers_absent"] == ["80 mg"] and f["terms_absent"] == ["Quellimab"]
    assert not f["empty"] and f["count"] == 2
    assert flags("", "ref")["empty"]
    assert flags("x", "ref", truncated=True)["truncated"]
    assert flags("take it take it take it take it take it take it now", "ref")["repetitive"]
    same = flags("Zorvane is dosed at 40 mg.", reference="Zorvane is dosed at 40 mg.")
    assert same["count"] == 0 and same["length_ratio"] == 1.0


# --------------------------------------------------------------------------- import


def test_import_maps_columns_and_keeps_ids(tmp_path):
    s = imported(tmp_path, rows(5, {1}), "mine")
    res = read_results(s)
    assert [x["id"] for x in res] == [f"q{i}" for i in range(5)]
    assert res[1]["flags"]["numbers_absent"] == ["101 mg"]
    assert read_session_json(s)["status"] == "finished"


def test_import_bad_input_names_line_and_field(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("Question,gold\nq,r\n")
    r = run_rounds("--sessions", str(tmp_path / "s"), "import-results", str(f), "--question", "Question",
                   "--reference", "gold", "--answer", "output")
    # the column is missing: said once, at the header (issue #17 item 11), not on every row
    assert r.returncode == 1 and "line 1, field 'output'" in r.stderr and "--answer" in r.stderr
    f.write_text("id,question,reference,answer\n1,q,r,a\n1,q2,r2,a2\n")
    r = run_rounds("--sessions", str(tmp_path / "s"), "import-results", str(f))
    assert r.returncode == 1 and "duplicate id '1'" in r.stderr
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


# --------------------------------------------------------------------------- marks


def test_marks_last_wins_undo_and_clear(tmp_path):
    s = imported(tmp_path, rows(3, set()), "m")
    with AssessmentLog(s, "alice") as log:
        log.mark("q0", "faithful")
        log.mark("q0", "hallucinated", categories=["contradiction"], severity="major", note="dose")
        log.mark("q1", "unsure")
        log.undo()  # q1 back to no mark
        log.undo()  # q0 back to faithful
        assert current(log.marks)[("alice", "q0")].label == "faithful"
        assert ("alice", "q1") not in current(log.marks)
        log.mark("q2", "hallucinated")
        log.mark("q2", "clear")
    marks, problems = read_marks(s / ASSESSMENTS)
    state = current(marks)
    assert problems == [] and set(state) == {("alice", "q0")}
    assert len((s / ASSESSMENTS).read_text().splitlines()) == 7  # append-only: nothing rewritten


def test_corrupt_mark_line_is_reported_and_skipped(tmp_path):
    s = imported(tmp_path, rows(2, set()), "c")
    with AssessmentLog(s, "bob") as log:
        log.mark("q0", "hallucinated")
    with open(s / ASSESSMENTS, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"annotator": "bob", "item": "q1", "label": "maybe"}) + "\n")
    with AssessmentLog(s, "bob") as log:
        log.mark("q1", "faithful")
        assert [p.line for p in log.problems] == [2, 3]
    rep = session_report(s)
    assert any("line 2" in n for n in rep["notes"]) and rep["annotators"]["bob"]["judged"] == 2


def test_second_writer_as_the_same_annotator_is_refused(tmp_path):
    s = imported(tmp_path, rows(1, set()), "l")
    with AssessmentLog(s, "carol"):
        with pytest.raises(SessionLockedError, match="carol"):
            AssessmentLog(s, "carol")
        with AssessmentLog(s, "dave"):
            pass
    with pytest.raises(UserError):
        AssessmentLog(s, "../evil")


# --------------------------------------------------------------------------- auto, report, compare, pairs


def test_auto_assess_and_report(tmp_path):
    s = imported(tmp_path, rows(10, {1, 2, 3, 4, 5, 6}), "auto")
    r = run_rounds("--sessions", str(s.parent), "assess", s.name, "--auto", "contains")
    assert r.returncode == 0 and "hallucinated 6" in r.stdout and "faithful 4" in r.stdout
    r = run_rounds("--sessions", str(s.parent), "report", s.name)
    assert r.returncode == 0
    assert "6/10 = 60.0 % (95 % CI 31.3–83.2 %)" in r.stdout
    assert (s / "report.md").exists() and json.loads((s / "report.json").read_text())["pooled"]["hallucinated"] == 6


def test_report_kappa_disagreements_and_unknown_items(tmp_path):
    s = imported(tmp_path, rows(6, set()), "k")
    with AssessmentLog(s, "a") as log:
        for i, lab in enumerate(["hallucinated", "hallucinated", "faithful", "faithful", "hallucinated", "faithful"]):
            log.mark(f"q{i}", lab)
        log.mark("q99", "hallucinated")
    with AssessmentLog(s, "b") as log:
        for i, lab in enumerate(["hallucinated", "faithful", "faithful", "faithful", "hallucinated", "unsure"]):
            log.mark(f"q{i}", lab)
    rep = session_report(s)
    (k,) = rep["kappa"]
    assert k["items"] == 5 and k["kappa"] == pytest.approx(0.615, abs=1e-3)
    assert rep["disagreements"] == ["q1"] and rep["unsure"] == ["q5"]
    assert any("q99" in n for n in rep["notes"])


def test_compare_paired_mcnemar(tmp_path):
    before = imported(tmp_path, rows(12, set(range(10))), "before")
    after = imported(tmp_path, rows(12, {0}), "after")
    for s in (before, after):
        assert run_rounds("--sessions", str(s.parent), "assess", s.name, "--auto", "exact").returncode == 0
    c = compare(before, after)
    p = c["paired"]
    assert (p["only_a"], p["only_b"], p["both_hallucinated"], p["neither"]) == (9, 0, 1, 2)
    assert p["mcnemar_p"] == pytest.approx(2 * 0.5**9)
    # the exact interval (Clopper-Pearson on the 9 discordant items, scaled by 9/12): 0.75 x (2 x 0.025^(1/9) - 1)
    assert p["difference"] == pytest.approx(0.75) and p["ci95"][0] == pytest.approx(0.75 * (2 * 0.025 ** (1 / 9) - 1))
    assert p["ci95"][1] == pytest.approx(0.75)
    r = run_rounds("--sessions", str(before.parent), "compare", before.name, after.name)
    assert r.returncode == 0 and "exact McNemar p = 0.00391" in r.stdout
    assert (before / f"compare-{after.name}.md").exists() and (after / f"compare-{before.name}.json").exists()


def test_compare_without_shared_items_is_unpaired_with_a_warning(tmp_path):
    a = imported(tmp_path, rows(4, {0, 1}), "ua")
    b_rows = [dict(r, item=f"other{i}") for i, r in enumerate(rows(4, {0}))]
    b = imported(tmp_path, b_rows, "ub")
    for s in (a, b):
        run_rounds("--sessions", str(s.parent), "assess", s.name, "--auto", "exact")
    c = compare(a, b)
    assert "unpaired" in c and any("unpaired" in w for w in c["warnings"])


def test_pairs_from_marks_refuse_held_out_and_warn_on_leaks(tmp_path):
    rnd = imported(tmp_path, rows(10, {0, 1, 2, 3, 4, 5}), "round")
    test = imported(tmp_path, rows(10, {0, 1}), "test", "--held-out")
    for s in (rnd, test):
        run_rounds("--sessions", str(s.parent), "assess", s.name, "--auto", "exact")
    with pytest.raises(UserError, match="held-out"):
        make_pairs([test], tmp_path / "p")
    rep = make_pairs([rnd], tmp_path / "pairs", val_fraction=0.34, seed=1)
    assert rep["train_pairs"] + rep["val_pairs"] == 6 and rep["val_pairs"] == 2
    train = [json.loads(x) for x in (tmp_path / "pairs" / "train_dpo.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "pairs" / "val_dpo.jsonl").read_text().splitlines()]
    assert not {t["prompt"] for t in train} & {t["prompt"] for t in val}
    assert all(t["chosen"] != t["rejected"] for t in train + val)
    sources = [json.loads(x) for x in (tmp_path / "pairs" / "pairs_sources.jsonl").read_text().splitlines()]
    assert sorted(i for s in sources for i in s["ids"]) == [f"{rnd.name}/q{i}" for i in range(6)]
    r = run_rounds("validate", str(tmp_path / "pairs" / "train_dpo.jsonl"), "--kind", "dpo")
    assert r.returncode == 0, r.stdout
    # the test set asks the same questions the pairs were built from: compare must say so
    c = compare(rnd, test)
    assert any("used to build training pairs" in w for w in c["warnings"])


def test_report_refuses_a_training_session(tmp_path):
    from engine.session import SessionWriter

    w = SessionWriter.create(tmp_path, "train", name="t")
    r = run_rounds("--sessions", str(tmp_path), "report", w.id)
    assert r.returncode == 1 and "not an evaluation" in r.stderr


def test_pairs_from_marks_exclude_held_out_questions_by_text(tmp_path):
    rnd = imported(tmp_path, rows(6, {0, 1, 2, 3}), "round")
    run_rounds("--sessions", str(rnd.parent), "assess", rnd.name, "--auto", "exact")
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"id": "q1", "question": "what is the DOSE of drug2", "reference": "x"}) + "\n")
    r = run_rounds("--sessions", str(rnd.parent), "pairs", rnd.name, "--out", str(tmp_path / "p"),
                   "--val-fraction", "0", "--exclude", str(test))
    assert r.returncode == 0, r.stderr
    prompts = [json.loads(x)["prompt"] for x in (tmp_path / "p" / "train_dpo.jsonl").read_text().splitlines()]
    # Drug2's question is held out by its text; q1's id means nothing across sets, so Drug1 stays
    assert sorted(prompts) == [f"What is the dose of Drug{i}?" for i in (0, 1, 3)]
    assert "held out (same question text) 1" in r.stdout


def test_pairs_with_a_refusal_keep_faithful_answers(tmp_path):
    rnd = imported(tmp_path, rows(6, {0, 1}), "refuse")
    run_rounds("--sessions", str(rnd.parent), "assess", rnd.name, "--auto", "exact")
    rep = make_pairs([rnd], tmp_path / "p", val_fraction=0, refusal="I don't know.")
    assert rep["chosen_from"]["keep answering"] == 4 and rep["train_pairs"] == 6
    triplets = [json.loads(x) for x in (tmp_path / "p" / "train_dpo.jsonl").read_text().splitlines()]
    keep = [t for t in triplets if t["rejected"] == "I don't know."]
    assert len(keep) == 4 and all(t["chosen"].endswith("mg daily.") for t in keep)
