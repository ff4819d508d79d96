from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from engine import data
from engine.data import format_report, load, token_stats, validate_file
from engine.demo_data import generate
from engine.errors import UserError

DEMO = Path(generate.__file__).parent


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


def only_error(report):
    assert len(report.errors) == 1, [str(p) for p in report.problems]
    return report.errors[0]


# --------------------------------------------------------------------------- one test per bad input


def test_empty_file(tmp_path):
    p = only_error(validate_file(write(tmp_path, "e.jsonl", ""), "sft"))
    assert p.file.endswith("e.jsonl") and "empty" in p.message and "question, answer" in p.hint


def test_not_utf8_names_the_line(tmp_path):
    f = write(tmp_path, "latin.csv", "question,answer\nok,fine\nbad,caf\xe9 au lait\n".encode("latin-1"))
    r = validate_file(f, "sft")
    p = only_error(r)
    assert p.line == 3 and "not UTF-8" in p.message and "0xe9" in p.message and "iconv" in p.hint
    assert len(r.rows) == 1  # the good row is still read


def test_invalid_json_names_the_line(tmp_path):
    f = write(tmp_path, "x.jsonl", '{"question": "a", "answer": "b"}\n\n{"question": "c" "answer": "d"}\n')
    p = only_error(validate_file(f, "sft"))
    assert p.line == 3 and "invalid JSON" in p.message and "column" in p.message


def test_missing_csv_column_names_it_and_the_flag(tmp_path):
    f = write(tmp_path, "m.csv", "Question,Response\nq,a\n")
    r = validate_file(f, "sft")
    by_field = {p.field: p for p in r.errors}
    assert len(r.errors) == 2 and all(p.line == 1 for p in r.errors)
    assert "Question, Response" in by_field["answer"].message
    assert by_field["answer"].hint == "rename the column, or map it: --answer COLUMN"
    assert by_field["question"].hint == "map it: --question Question"  # a case-only difference
    # ... and the mapping fixes it
    r = validate_file(f, "sft", {"question": "Question", "answer": "Response"})
    assert r.ok and r.rows[0]["question"] == "q" and r.rows[0]["answer"] == "a"


def test_missing_jsonl_field_names_line_and_field(tmp_path):
    f = write(tmp_path, "m.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q2", "reply": "a2"}\n')
    p = only_error(validate_file(f, "sft"))
    assert (p.line, p.field) == (2, "answer") and "question, reply" in p.message


@pytest.mark.parametrize("fld", ["prompt", "chosen", "rejected"])
def test_empty_prompt_chosen_rejected(tmp_path, fld):
    row = {"prompt": "p", "chosen": "yes", "rejected": "no", fld: "   "}
    f = write(tmp_path, "d.jsonl", json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"}) + "\n"
              + json.dumps(row) + "\n")
    p = only_error(validate_file(f, "dpo"))
    assert (p.line, p.field) == (2, fld) and "empty" in p.message


def test_chosen_identical_to_rejected(tmp_path):
    f = write(tmp_path, "d.jsonl", json.dumps({"prompt": "p", "chosen": "Same.", "rejected": " Same."}) + "\n")
    p = only_error(validate_file(f, "dpo"))
    assert p.line == 1 and p.field == "rejected" and "identical" in p.message


def test_chosen_identical_to_rejected_conversational(tmp_path):
    msg = [{"role": "assistant", "content": "Same."}]
    f = write(tmp_path, "d.jsonl", json.dumps({"prompt": [{"role": "user", "content": "q"}],
                                               "chosen": msg, "rejected": msg}) + "\n")
    assert "identical" in only_error(validate_file(f, "dpo")).message


def test_duplicate_ids(tmp_path):
    f = write(tmp_path, "t.csv", "id,question,reference\nA1,q1,r1\nA2,q2,r2\nA1,q3,r3\n")
    p = only_error(validate_file(f, "test"))
    assert (p.line, p.field) == (4, "id") and "first on line 2" in p.message


def test_header_only_csv(tmp_path):
    p = only_error(validate_file(write(tmp_path, "h.csv", "question,answer\n"), "sft"))
    assert p.line == 1 and "header but no data rows" in p.message


def test_two_gigabyte_single_line_is_reported_without_reading_it_into_memory(tmp_path):
    f = tmp_path / "huge.jsonl"
    with open(f, "wb") as fh:
        fh.write(b'{"question": "')
        fh.truncate(2 * 1024**3)  # a sparse 2 GiB line: costs no disk
        fh.seek(0, 2)
        fh.write(b'", "answer": "a"}\n{"question": "small", "answer": "fine"}\n')
    tracemalloc.start()
    try:
        r = validate_file(f, "sft")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    p = only_error(r)
    assert p.line == 1 and "2,048 MiB" in p.message and "not read" in p.message
    assert [row["question"] for row in r.rows] == ["small"] and r.rows[0]["line"] == 2
    assert peak < 64 * 1024**2, f"peak {peak / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- more bad input


def test_wrong_types_and_mixed_dpo_formats(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},
        {"prompt": "p", "chosen": 3, "rejected": "b"},
        [1, 2],
    ]
    f = write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    r = validate_file(f, "dpo")
    msgs = {p.line: p.message for p in r.errors}
    assert "mixes formats" in msgs[2] and "must be text" in msgs[3] and "JSON object" in msgs[4]


def test_bad_messages_in_conversational_dpo(tmp_path):
    row = {"prompt": [{"role": "robot", "content": "p"}], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    p = only_error(validate_file(write(tmp_path, "d.jsonl", json.dumps(row) + "\n"), "dpo"))
    assert p.field == "prompt" and "robot" in p.message


def test_csv_row_with_wrong_column_count(tmp_path):
    f = write(tmp_path, "c.csv", "question,answer\nq1,a1\nq2,a2,extra\n")
    p = only_error(validate_file(f, "sft"))
    assert p.line == 3 and "3 columns" in p.message and "quotes" in p.hint


def test_missing_file_and_unknown_mapping_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        validate_file(tmp_path / "nope.jsonl", "sft")
    with pytest.raises(UserError, match="not a field"):
        validate_file(write(tmp_path, "a.jsonl", "{}\n"), "sft", {"prompt": "x"})


def test_load_raises_with_the_problems_and_a_hint(tmp_path):
    f = write(tmp_path, "x.jsonl", '{"question": "q", "answer": ""}\n')
    with pytest.raises(UserError) as e:
        load(f, "sft")
    assert "line 1" in str(e.value) and "'answer'" in str(e.value) and "rounds validate" in e.value.hint


def test_duplicate_content_is_a_warning_not_an_error(tmp_path):
    f = write(tmp_path, "w.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q", "answer": "a"}\n')
    r = validate_file(f, "sft")
    assert r.ok and len(r.warnings) == 1 and r.warnings[0].line == 2


# --------------------------------------------------------------------------- good input


def test_csv_with_quoted_multiline_field_keeps_line_numbers(tmp_path):
    f = write(tmp_path, "q.csv", 'question,answer\n"two\nlines",a\nq2,\n')
    r = validate_file(f, "sft")
    assert r.rows[0]["question"] == "two\nlines"
    assert only_error(r).line == 4


def test_tsv_json_array_and_bom(tmp_path):
    assert validate_file(write(tmp_path, "t.tsv", "question\treference\nq\tr\n"), "test").ok
    arr = write(tmp_path, "a.json", json.dumps([{"question": "q", "answer": "a"}]))
    r = validate_file(arr, "sft")
    assert r.ok and r.format == "json" and len(r.rows) == 1
    bom = write(tmp_path, "b.csv", "\ufeffquestion,answer\nq,a\n")
    assert validate_file(bom, "sft").ok


def test_conversational_dpo_is_valid(tmp_path):
    row = {"prompt": [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "q"}],
           "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    r = validate_file(write(tmp_path, "c.jsonl", json.dumps(row) + "\n"), "dpo")
    assert r.ok and r.conversational is True


@pytest.mark.parametrize("name,kind,count", [
    ("sft_train.jsonl", "sft", 400), ("sft_val.jsonl", "sft", 20), ("test.jsonl", "test", 70),
    ("assess_questions.jsonl", "test", 700), ("dpo_train.jsonl", "dpo", 630), ("dpo_val.jsonl", "dpo", 70),
])
def test_bundled_demo_data_is_valid(name, kind, count):
    r = validate_file(DEMO / name, kind)
    assert r.ok and not r.warnings and len(r.rows) == count


def test_committed_demo_data_matches_its_generator(tmp_path):
    generate.write(tmp_path)
    for produced in tmp_path.iterdir():
        assert produced.read_bytes() == (DEMO / produced.name).read_bytes(), produced.name


def test_demo_test_set_uses_only_drugs_absent_from_training():
    drugs = json.loads((DEMO / "drugs.json").read_text())
    unseen = {d["drug"] for d in drugs if d["pool"] == "unknown_test"}
    training_text = "".join((DEMO / n).read_text() for n in
                            ("sft_train.jsonl", "sft_val.jsonl", "dpo_train.jsonl", "dpo_val.jsonl",
                             "assess_questions.jsonl"))
    assert unseen and not any(d in training_text for d in unseen)
    test_rows = [json.loads(line) for line in (DEMO / "test.jsonl").read_text().splitlines()]
    assert {r["drug"] for r in test_rows if not r["answerable"]} == unseen


def test_token_stats_use_the_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    r = validate_file(DEMO / "sft_train.jsonl", "sft")
    stats = token_stats(r, tok, max_length=25)
    assert stats["prompt"]["min"] > 5 and stats["total"]["max"] > stats["prompt"]["max"]
    over = sum(len(tok.apply_chat_template([{"role": "user", "content": row["question"]},
                                            {"role": "assistant", "content": row["answer"]}])["input_ids"]) > 25
               for row in r.rows)
    assert stats["total"]["over_max_length"] == over > 0
    text = format_report(r)
    assert "over --max-length 25" in text and text.strip().endswith("OK: 0 error(s), 0 warning(s)")


def test_problem_cap_keeps_memory_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_PROBLEMS_KEPT", 5)
    f = write(tmp_path, "many.jsonl", "not json\n" * 20)
    r = validate_file(f, "sft")
    assert len(r.problems) == 5 and r.problems_dropped == 15 and not r.ok
    assert "15 more problem(s)" in format_report(r, max_problems=5)
