"""`rounds pairs --from-columns / --from-labels / --from-samples`: preference data at scale."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pytest

from engine import pairs
from engine.data import validate_file
from engine.errors import UserError
from tests.conftest import ROOT, run_rounds

DEMO = ROOT / "engine" / "demo_data"


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def columns(n: int, repeat: int = 1) -> list[dict]:
    """n questions, each asked ``repeat`` times with a different wrong answer."""
    return [{"id": f"r{i}-{k}", "q": f"What is fact {i}?", "kb": f"Fact {i} is {i * 7}.",
             "good": f"Fact {i} is {i * 7}.", "bad": f"Fact {i} is {i * 7 + k + 1}."}
            for i in range(n) for k in range(repeat)]


def build_columns(src: Path, out: Path, **kw) -> dict:
    mode = pairs.columns_mode(str(src), "q", "good", "bad", "kb")
    return pairs.build(mode, pairs.PairOptions(out=str(out), **kw), root=None, quiet=True, echo=lambda m: None)


# --------------------------------------------------------------------------- --from-columns

def test_columns_write_trl_pairs_split_by_question(tmp_path):
    src = write_csv(tmp_path / "mh.csv", columns(50, repeat=3))
    rep = build_columns(src, tmp_path / "out", val_fraction=0.2, seed=3)
    train, val = read_jsonl(tmp_path / "out" / "train_dpo.jsonl"), read_jsonl(tmp_path / "out" / "val_dpo.jsonl")
    assert len(train) + len(val) == 150 and rep["train_pairs"] == len(train) and rep["val_pairs"] == len(val)
    # exactly 20 % of the 50 questions, and never one question in both files
    assert rep["val_groups"] == 10 and rep["train_groups"] == 40 and len(val) == 30
    assert not {t["prompt"] for t in train} & {t["prompt"] for t in val}
    assert train[0]["prompt"].startswith("Fact ") and "\n\nWhat is fact" in train[0]["prompt"]
    assert set(train[0]) == {"prompt", "chosen", "rejected"}
    for f in ("train_dpo.jsonl", "val_dpo.jsonl"):
        assert validate_file(tmp_path / "out" / f, "dpo").ok
    # every pair names its source row; the report counts the rows used
    sources = read_jsonl(tmp_path / "out" / "pairs_sources.jsonl")
    assert len(sources) == 150 and sorted(s["lines"][0] for s in sources) == list(range(2, 152))
    assert rep["source_rows"] == {"read": 150, "used": 150, "used_lines": "2-151", "per_pair": "pairs_sources.jsonl"}
    md = (tmp_path / "out" / "pairs_report.md").read_text()
    assert "**120** pairs (40 groups)" in md and "0.8-1.25 | 150" in md
    # the same seed gives the same split; another seed another one
    again = build_columns(src, tmp_path / "again", val_fraction=0.2, seed=3)
    assert (tmp_path / "again" / "val_dpo.jsonl").read_bytes() == (tmp_path / "out" / "val_dpo.jsonl").read_bytes()
    assert again["val_groups"] == 10
    build_columns(src, tmp_path / "other", val_fraction=0.2, seed=4)
    assert (tmp_path / "other" / "val_dpo.jsonl").read_bytes() != (tmp_path / "out" / "val_dpo.jsonl").read_bytes()


def test_dropped_pairs_are_counted_by_reason(tmp_path, tiny_model):
    rows = [
        {"q": "Q1?", "good": "Right one.", "bad": "Wrong one."},
        {"q": "Q1?", "good": "Right one.", "bad": "Wrong one."},  # duplicate of the line above
        {"q": "q1", "good": "right ONE", "bad": "wrong one!"},  # the same pair, normalised
        {"q": "Q2?", "good": "Same.", "bad": "same"},  # identical after normalising
        {"q": "Q3?", "good": "", "bad": "Something."},  # empty chosen
        {"q": "Q4?", "good": "Fine.", "bad": "   "},  # empty rejected
        {"q": "Q5?", "good": "word " * 300, "bad": "Short."},  # too long for --max-length 64
        {"q": "Q6?", "good": "Kept.", "bad": "Also kept, but wrong."},
    ]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    mode = pairs.columns_mode(str(src), "q", "good", "bad")
    rep = pairs.build(mode, pairs.PairOptions(out=str(tmp_path / "o"), val_fraction=0, max_length=64,
                                              tokenizer=str(tiny_model)), quiet=True)
    assert rep["dropped"] == {"duplicate pair": 2, "chosen identical to rejected": 1, "empty chosen or rejected": 2,
                              "too long for --max-length 64": 1}
    assert rep["train_pairs"] == 2 and rep["val_pairs"] == 0
    assert rep["source_rows"]["used"] == 2 and rep["source_rows"]["used_lines"] == "1,8"


def test_max_length_needs_a_tokenizer(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"q": "Q?", "good": "a", "bad": "b"}])
    with pytest.raises(UserError, match="needs a tokenizer"):
        pairs.build(pairs.columns_mode(str(src), "q", "good", "bad"),
                    pairs.PairOptions(out=str(tmp_path / "o"), max_length=10), quiet=True)


def test_a_malformed_row_is_reported_by_line_and_skipped(tmp_path):
    lines = [json.dumps(r) for r in columns(6)]
    lines.insert(2, '{"q": "broken", "good": ')  # line 3: not JSON
    lines.insert(4, json.dumps({"q": "no answers here"}))  # line 5: fields missing
    lines.insert(5, json.dumps({"q": ["a list"], "kb": "x", "good": "g", "bad": "b"}))  # line 6: not text
    src = write_jsonl(tmp_path / "d.jsonl", lines)
    rep = build_columns(src, tmp_path / "o", val_fraction=0)
    assert rep["train_pairs"] == 6 and rep["dropped"]["malformed source rows"] == 3
    text = "\n".join(rep["problems"])
    assert "line 3: error: invalid JSON" in text
    assert "line 5, field 'good': error: missing field 'good'" in text
    assert "line 6, field 'q': error: must be text" in text
    # the command line says the same, exits 0 and keeps the good rows
    r = run_rounds("--sessions", str(tmp_path / "s"), "pairs", "--from-columns", str(src), "--prompt", "q",
                   "--context", "kb", "--chosen", "good", "--rejected", "bad", "--out", str(tmp_path / "cli"),
                   "--val-fraction", "0")
    assert r.returncode == 0, r.stderr
    assert "6 training pairs" in r.stdout.replace(",", "") and "could not be read and were skipped" in r.stdout
    assert "line 3" in r.stdout


def test_a_csv_without_a_named_column_is_refused_with_the_columns(tmp_path):
    src = write_csv(tmp_path / "mh.csv", [{"Question": "Q?", "good": "a", "bad": "b"}])
    r = run_rounds("--sessions", str(tmp_path / "s"), "pairs", "--from-columns", str(src), "--prompt", "question",
                   "--chosen", "good", "--rejected", "bad", "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "line 1, field 'question': missing column 'question'" in r.stderr and "use 'Question'" in r.stderr


def test_bad_invocations_say_what_to_do(tmp_path):
    src = write_csv(tmp_path / "mh.csv", columns(2))
    cases = [
        (["--from-columns", str(src), "--prompt", "q", "--out", str(tmp_path / "o")], "needs --chosen, --rejected"),
        (["--from-columns", str(src), "--prompt", "q", "--chosen", "good", "--rejected", "bad",
          "--out", str(tmp_path / "o.jsonl")], "--out is a folder here"),
        (["--from-columns", str(tmp_path / "nope.csv"), "--prompt", "q", "--chosen", "good", "--rejected", "bad",
          "--out", str(tmp_path / "o")], "no such file"),
        (["--from-labels", str(src), "--out", str(tmp_path / "o")], "needs --group, --text, --label"),
        (["--out", str(tmp_path / "o")], "give one source"),
        (["somesession", "--from-labels", str(src), "--out", str(tmp_path / "o")], "both given"),
        (["--from-samples", "--out", str(tmp_path / "o")], "--from-samples needs --model"),
        (["--from-columns", str(src), "--prompt", "q", "--chosen", "good", "--rejected", "bad",
          "--out", str(tmp_path / "o"), "--val-fraction", "1.5"], "--val-fraction must be"),
    ]
    for args, message in cases:
        r = run_rounds("--sessions", str(tmp_path / "s"), "pairs", *args)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


# --------------------------------------------------------------------------- --exclude

def test_exclude_drops_held_out_questions_by_text_even_when_ids_differ(tmp_path):
    src = write_csv(tmp_path / "mh.csv", columns(10))
    # the test file asks question 3 with other spacing, case and punctuation, under another id,
    # and shares an id (not a text) with row r5-0
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"id": "t-1", "question": "  what IS fact 3 ", "reference": "x"},
        {"id": "r5-0", "question": "An unrelated question", "reference": "y"},
    ])
    rep = build_columns(src, tmp_path / "o", val_fraction=0, exclude=[str(test)])
    assert rep["dropped"] == {"held out (same question text)": 1, "held out (same id)": 1}
    prompts = [t["prompt"] for t in read_jsonl(tmp_path / "o" / "train_dpo.jsonl")]
    assert len(prompts) == 8 and not any("fact 3?" in p or "fact 5?" in p for p in prompts)
    assert rep["excluded_from"] == [{"source": str(test), "ids": 2, "questions": 2}]


def test_exclude_an_eval_session(tmp_path):
    from engine.evaluate import import_results

    results = write_jsonl(tmp_path / "res.jsonl", [
        {"id": "held-7", "question": "What is fact 7?", "reference": "r", "answer": "a"}])
    w = import_results(str(results), {}, tmp_path / "sessions", name="test", held_out=True)
    src = write_csv(tmp_path / "mh.csv", columns(10))
    rep = build_columns(src, tmp_path / "o", val_fraction=0, exclude=[str(w.path)])
    assert rep["dropped"] == {"held out (same question text)": 1} and rep["train_pairs"] == 9
    with pytest.raises(UserError, match="neither an evaluation session nor a file"):
        build_columns(src, tmp_path / "o2", exclude=[str(tmp_path / "missing")])


# --------------------------------------------------------------------------- --from-labels

def statements() -> list[dict]:
    rows = []
    for g in range(6):
        ctx = f"Passage {g}: the sky of planet {g} is colour {g}."
        for k in range(3):
            rows.append({"id": f"s{g}-t{k}", "context": ctx, "statement": f"Planet {g} sky is colour {g} ({k}).",
                         "label": ["true", "1", "Factual"][k]})
        for k in range(2):
            rows.append({"id": f"s{g}-f{k}", "context": ctx, "statement": f"Planet {g} sky is colour {g + k + 1}.",
                         "label": ["false", "0"][k]})
    rows.append({"id": "lonely", "context": "A passage with only true statements.", "statement": "It is true.",
                 "label": "yes"})
    return rows


def test_labels_pair_factual_with_non_factual_of_the_same_group(tmp_path):
    src = write_csv(tmp_path / "medhal.csv", statements())
    mode = pairs.labels_mode(str(src), "context", "statement", "label",
                             template=r"Read:\n{context}\nState one fact.", max_per_group=2)
    rep = pairs.build(mode, pairs.PairOptions(out=str(tmp_path / "o"), val_fraction=0.34), quiet=True)
    got = read_jsonl(tmp_path / "o" / "train_dpo.jsonl") + read_jsonl(tmp_path / "o" / "val_dpo.jsonl")
    assert len(got) == 12 and rep["val_groups"] == 2 and rep["train_groups"] == 4
    for t in got:
        g = t["prompt"].split("planet ")[1][0]
        assert t["prompt"] == f"Read:\nPassage {g}: the sky of planet {g} is colour {g}.\nState one fact."
        assert t["chosen"].startswith(f"Planet {g} sky is colour {g} (")  # a true statement of that group
        assert t["rejected"].startswith(f"Planet {g} sky is colour ") and "(" not in t["rejected"]
    assert rep["dropped"] == {"groups without a non-factual statement": 1,
                              "statements beyond --max-pairs-per-group 2": 6}


def test_labels_unknown_value_is_reported_and_can_be_named(tmp_path):
    rows = statements()
    rows[0]["label"] = "mostly"
    src = write_csv(tmp_path / "medhal.csv", rows)
    rep = pairs.build(pairs.labels_mode(str(src), "context", "statement", "label"),
                      pairs.PairOptions(out=str(tmp_path / "o"), val_fraction=0), quiet=True)
    assert rep["dropped"]["malformed source rows"] == 1
    assert "line 2, field 'label': error: label 'mostly' is neither factual nor not factual" in rep["problems"][0]
    rep = pairs.build(pairs.labels_mode(str(src), "context", "statement", "label", factual=["mostly"]),
                      pairs.PairOptions(out=str(tmp_path / "o2"), val_fraction=0), quiet=True)
    assert "malformed source rows" not in rep["dropped"]
    # the default prompt is the group column itself; a template field the rows lack is refused per row
    assert read_jsonl(tmp_path / "o2" / "train_dpo.jsonl")[0]["prompt"].startswith("Passage 0")
    with pytest.raises(UserError, match="no pairs came out"):
        pairs.build(pairs.labels_mode(str(src), "context", "statement", "label", template="{topic}: {context}"),
                    pairs.PairOptions(out=str(tmp_path / "o3"), val_fraction=0), quiet=True)
    report = json.loads((tmp_path / "o3" / "pairs_report.json").read_text())
    assert "line 3, field 'topic': error: the prompt template uses 'topic'" in report["problems"][1]


# --------------------------------------------------------------------------- streaming

def big_source(path: Path, questions: int, repeat: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(questions):
            for k in range(repeat):
                f.write(json.dumps({"id": f"r{i}-{k}", "q": f"What is fact number {i} of this long list?",
                                    "good": f"Fact {i} is {i * 7}, as every source agrees." + " pad" * 20,
                                    "bad": f"Fact {i} is {i * 7 + k + 1}, surely." + " pad" * 20}) + "\n")
    return path


def test_buckets_on_disk_give_the_same_pairs_as_memory(tmp_path, monkeypatch):
    src = big_source(tmp_path / "big.jsonl", 3000, 2)
    mode = pairs.columns_mode(str(src), "q", "good", "bad")
    one = pairs.build(mode, pairs.PairOptions(out=str(tmp_path / "mem"), seed=1, val_fraction=0.18), quiet=True)
    monkeypatch.setattr(pairs, "BUCKET_BYTES", 64 * 1024)  # about 27 buckets
    many = pairs.build(mode, pairs.PairOptions(out=str(tmp_path / "disk"), seed=1, val_fraction=0.18), quiet=True)
    assert src.stat().st_size > 20 * 64 * 1024
    for f in ("train_dpo.jsonl", "val_dpo.jsonl"):
        a, b = (tmp_path / "mem" / f).read_text().splitlines(), (tmp_path / "disk" / f).read_text().splitlines()
        assert sorted(a) == sorted(b)
    assert (one["train_pairs"], one["val_groups"]) == (many["train_pairs"], many["val_groups"]) == (4920, 540)
    assert not list((tmp_path / "disk").glob(".pairs-*"))  # the buckets are cleaned up


def test_a_large_source_is_streamed_not_loaded(tmp_path, monkeypatch):
    """Peak Python memory does not grow with the file: twice the rows, about the same peak."""
    import numpy  # noqa: F401  (imported before measuring: the split uses it)

    monkeypatch.setattr(pairs, "BUCKET_BYTES", 256 * 1024)
    peaks, sizes = [], []
    for n in (10000, 20000):
        src = big_source(tmp_path / f"big{n}.jsonl", n, 2)
        sizes.append(src.stat().st_size)
        mode = pairs.columns_mode(str(src), "q", "good", "bad")
        tracemalloc.start()
        try:
            rep = pairs.build(mode, pairs.PairOptions(out=str(tmp_path / f"o{n}")), quiet=True)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert rep["train_pairs"] + rep["val_pairs"] == 2 * n
    assert sizes[1] > 12 * 2**20
    assert peaks[1] < 1.25 * peaks[0] + 2**20, f"peaks {peaks} for files of {sizes} bytes"
    assert peaks[1] < sizes[1] / 4, f"peak {peaks[1] / 2**20:.1f} MiB for a {sizes[1] / 2**20:.1f} MiB file"


def test_progress_events_in_the_session(tmp_path):
    src = write_csv(tmp_path / "mh.csv", columns(20))
    r = run_rounds("--sessions", str(tmp_path / "s"), "pairs", "--from-columns", str(src), "--prompt", "q",
                   "--context", "kb", "--chosen", "good", "--rejected", "bad", "--out", str(tmp_path / "o"),
                   "--name", "mh")
    assert r.returncode == 0, r.stderr
    (session,) = (tmp_path / "s").iterdir()
    meta = json.loads((session / "session.json").read_text())
    assert meta["kind"] == "pairs" and meta["status"] == "finished" and meta["config"]["mode"] == "columns"
    events = read_jsonl(session / "events.jsonl")
    progress = [e for e in events if e["type"] == "progress"]
    reading = [e for e in progress if e["phase"] == "reading"]
    assert reading[-1]["unit"] == "MiB" and reading[-1]["step"] == reading[-1]["max_steps"] == 1
    assert reading[-1]["rows"] == 20
    assert progress[-1]["phase"] == "pairing" and progress[-1]["step"] == progress[-1]["max_steps"] == 20
    assert any(e.get("kind") == "finished" and e["train_pairs"] + e["val_pairs"] == 20 for e in events)
    used = json.loads((session / "used_for_pairs.json").read_text())
    assert len(used["questions"]) == 20 and (session / "pairs_report.json").exists()


# --------------------------------------------------------------------------- --from-samples

def test_samples_judged_by_rule_and_by_marks(tmp_path, tiny_model):
    """A real sampled eval of the tiny model; judged answers paired, the reference chosen when none is right."""
    data = write_jsonl(tmp_path / "sft.jsonl", [
        {"id": f"q{i}", "question": f"What is Brioxivane number {i}?", "answer": f"Brioxivane is number {i}."}
        for i in range(6)])
    sroot = tmp_path / "s"
    r = run_rounds("--sessions", str(sroot), "pairs", "--from-samples", "--model", str(tiny_model), "--data",
                   str(data), "--samples", "3", "--max-new-tokens", "8", "--batch-size", "4", "--out",
                   str(tmp_path / "o"), "--val-fraction", "0", "--judge", "contains", timeout=300)
    assert r.returncode == 0, r.stderr
    (eval_dir,) = [p for p in sroot.iterdir() if "-eval-" in p.name]
    results = read_jsonl(eval_dir / "results.jsonl")
    assert len(results) == 18 and {x["id"] for x in results} == {f"q{i}~{j}" for i in range(6) for j in (1, 2, 3)}
    assert all(x["extra"]["question_id"] == x["id"].split("~")[0] and x["generation"]["decoding"] == "sampled"
               for x in results)
    rep = json.loads((tmp_path / "o" / "pairs_report.json").read_text())
    train = read_jsonl(tmp_path / "o" / "train_dpo.jsonl")
    # an untrained model's samples are all wrong: each question's reference is chosen over its samples
    distinct = {(x["question"], x["answer"].strip().lower().strip(".")) for x in results}
    assert rep["chosen_from"] == {"reference as chosen": len(train)} and 6 <= len(train) <= len(distinct)
    assert all(t["chosen"] == f"Brioxivane is number {t['prompt'].split()[-1][:-1]}." for t in train)
    assert rep["settings"]["samples"] == 3 and rep["settings"]["judge"] == "contains"

    # --judge marks: nothing marked yet -> says how; one answer marked faithful -> it is chosen
    r = run_rounds("--sessions", str(sroot), "pairs", "--from-samples", "--resume", eval_dir.name, "--judge",
                   "marks", "--out", str(tmp_path / "m"))
    assert r.returncode == 1 and f"rounds assess {eval_dir.name}" in r.stderr
    from engine.assessment import AssessmentLog

    with AssessmentLog(eval_dir, "ana") as log:
        log.mark("q0~1", "faithful")
        log.mark("q0~2", "hallucinated")
        log.mark("q1~1", "hallucinated")
    r = run_rounds("--sessions", str(sroot), "pairs", "--from-samples", "--resume", eval_dir.name, "--judge",
                   "marks", "--out", str(tmp_path / "m"), "--val-fraction", "0")
    got = read_jsonl(tmp_path / "m" / "train_dpo.jsonl")
    by_id = {x["id"]: x["answer"] for x in results}
    expected_q0 = by_id["q0~1"].strip().lower() != by_id["q0~2"].strip().lower()
    assert r.returncode == 0, r.stderr
    assert len(got) == 1 + expected_q0
    if expected_q0:
        assert {"chosen": by_id["q0~1"], "rejected": by_id["q0~2"]}.items() <= got[0].items()
    assert got[-1]["chosen"] == "Brioxivane is number 1." and got[-1]["rejected"] == by_id["q1~1"]
    mrep = json.loads((tmp_path / "m" / "pairs_report.json").read_text())
    assert mrep["dropped"]["answers not judged (unsure or no mark)"] == 15


def test_samples_resume_after_a_stop(tmp_path, tiny_model):
    """A sampling run cut short continues where it stopped, with the same answers as an unbroken run."""
    from engine import evaluate

    data = write_jsonl(tmp_path / "t.jsonl", [
        {"id": f"q{i}", "question": f"Question {i}?", "reference": f"Answer {i}."} for i in range(5)])
    spec = evaluate.EvalSpec(model=str(tiny_model), data=str(data), batch_size=2, max_new_tokens=6, device="cpu",
                             samples=2, temperature=1.0, seed=5)
    full = evaluate.start(spec, tmp_path / "a", name="full").path
    assert evaluate.run(full, echo=lambda m: None) == 0
    cut = evaluate.start(spec, tmp_path / "b", name="cut").path
    whole = read_jsonl(full / "results.jsonl")
    # the cut run got only its first batch (2 questions), and its last line was torn by a crash
    lines = (full / "results.jsonl").read_text().splitlines(keepends=True)
    (cut / "results.jsonl").write_text("".join(lines[:3]) + lines[3][:10])
    assert evaluate.run(cut, echo=lambda m: None) == 0
    resumed = read_jsonl(cut / "results.jsonl")
    assert sorted((x["id"], x["answer"]) for x in resumed) == sorted((x["id"], x["answer"]) for x in whole)
    assert len(resumed) == 10


def test_pairs_of_each_mode_on_the_demo_data(tmp_path):
    """The demo's MedHallu- and MedHal-style files, with the held-out test set excluded."""
    out = tmp_path / "mh"
    r = run_rounds("--sessions", str(tmp_path / "s"), "pairs", "--from-columns", str(DEMO / "medhallu_style.csv"),
                   "--prompt", "question", "--context", "knowledge", "--chosen", "ground_truth", "--rejected",
                   "hallucinated_answer", "--out", str(out), "--exclude", str(DEMO / "test.jsonl"))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "pairs_report.json").read_text())
    test_questions = {json.loads(x)["question"] for x in (DEMO / "test.jsonl").read_text().splitlines()}
    produced = read_jsonl(out / "train_dpo.jsonl") + read_jsonl(out / "val_dpo.jsonl")
    assert not any(p["prompt"].split("\n\n")[-1] in test_questions for p in produced)
    assert rep["train_pairs"] + rep["val_pairs"] + rep["dropped"]["held out (same question text)"] == 200
    r = run_rounds("--sessions", str(tmp_path / "s"), "pairs", "--from-labels", str(DEMO / "medhal_style.csv"),
                   "--group", "context", "--text", "statement", "--label", "label", "--out", str(tmp_path / "ml"))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "ml" / "pairs_report.json").read_text())
    assert rep["train_groups"] + rep["val_groups"] == 40 and rep["train_pairs"] + rep["val_pairs"] == 160


def test_a_stopped_run_leaves_the_previous_output_and_says_so(tmp_path):
    src = write_csv(tmp_path / "mh.csv", columns(30))
    out = tmp_path / "o"
    build_columns(src, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    mode = pairs.columns_mode(str(src), "q", "good", "bad", "kb")
    real, calls = mode.pairs, []

    def interrupted(group, sink, dropped):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(group, sink, dropped)

    mode.pairs = interrupted
    with pytest.raises(KeyboardInterrupt):
        pairs.build(mode, pairs.PairOptions(out=str(out)), tmp_path / "s", quiet=True)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # nothing half-written, nothing lost
    (session,) = (tmp_path / "s").iterdir()
    meta = json.loads((session / "session.json").read_text())
    assert meta["status"] == "stopped" and meta["error"] == "interrupted"
