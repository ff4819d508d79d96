"""Data as people have it: TRL's implicit-prompt preference layouts, Parquet files and folders
written by `datasets`' save_to_disk — validated with file/row/field problems, and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import metrics, only_session

from conftest import run_rounds
from engine.data import SAMPLE_ROWS, format_report, load, validate_file
from engine.errors import UserError


def conv(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def implicit_pairs(n: int = 12) -> list[dict]:
    """TRL's implicit-prompt preference layout: each answer the whole exchange, no prompt."""
    return [{"chosen": conv(f"What is {i} plus one?", f"{i + 1}."),
             "rejected": conv(f"What is {i} plus one?", f"{i + 7}, I believe.")} for i in range(n)]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def parquet(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


def only_error(report):
    assert len(report.errors) == 1, [str(p) for p in report.problems]
    return report.errors[0]


# ---------------------------------------------------------------------------- TRL's implicit prompt

def test_implicit_prompt_conversations_take_their_common_beginning_as_the_prompt(tmp_path):
    rows = load(jsonl(tmp_path / "p.jsonl", implicit_pairs(3)), "dpo")
    assert rows[1]["prompt"] == [{"role": "user", "content": "What is 1 plus one?"}]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "2."}]
    assert rows[1]["rejected"] == [{"role": "assistant", "content": "8, I believe."}]
    text = format_report(validate_file(tmp_path / "p.jsonl", "dpo"))
    assert "implicit prompt" in text and "OK: 0 error(s)" in text


def test_implicit_prompt_text_in_csv_is_cut_at_the_last_shared_space(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('chosen,rejected\n"Is the sky blue? Yes, it is.","Is the sky blue? No, it is green."\n')
    (row,) = load(f, "dpo")
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Is the sky blue?", " Yes, it is.", " No, it is green.")


def test_a_pair_with_no_shared_beginning_is_a_missing_prompt_with_the_layout_named(tmp_path):
    rows = implicit_pairs(2) + [{"chosen": [{"role": "assistant", "content": "a"}],
                                 "rejected": [{"role": "assistant", "content": "b"}]}]
    p = only_error(validate_file(jsonl(tmp_path / "p.jsonl", rows), "dpo"))
    assert p.line == 3 and p.field == "prompt" and "missing field 'prompt'" in p.message
    assert "implicit-prompt layout" in p.hint


def test_a_text_prompt_beside_whole_conversations_is_dropped_as_trl_does(tmp_path):
    rows = [dict(r, prompt="What is it?") for r in implicit_pairs(2)]
    out = load(jsonl(tmp_path / "p.jsonl", rows), "dpo")
    assert out[0]["prompt"] == [{"role": "user", "content": "What is 0 plus one?"}]


def test_kto_implicit_prompt_is_the_conversation_before_its_last_assistant_turns(tmp_path):
    rows = [{"completion": conv(f"Q{i}?", f"A{i}."), "label": i % 2 == 0} for i in range(4)]
    out = load(jsonl(tmp_path / "k.jsonl", rows), "kto")
    assert out[0]["prompt"] == [{"role": "user", "content": "Q0?"}]
    assert out[0]["completion"] == [{"role": "assistant", "content": "A0."}] and out[0]["label"] is True
    bad = [{"completion": [{"role": "assistant", "content": "lonely"}], "label": True}]
    p = only_error(validate_file(jsonl(tmp_path / "bad.jsonl", bad), "kto"))
    assert p.field == "prompt" and "implicit-prompt layout" in p.hint


# ---------------------------------------------------------------------------- Parquet

def test_parquet_standard_and_conversational_files_read_like_jsonl(tmp_path):
    std = [{"prompt": f"Q{i}?", "chosen": "yes", "rejected": "no", "id": i} for i in range(5)]
    assert [r["prompt"] for r in load(parquet(tmp_path / "s.parquet", std), "dpo")] == [f"Q{i}?" for i in range(5)]
    rows = load(parquet(tmp_path / "c.parquet", implicit_pairs(4)), "dpo")
    assert rows[3]["chosen"] == [{"role": "assistant", "content": "4."}]
    r = validate_file(tmp_path / "c.parquet", "dpo")
    assert r.format == "parquet" and r.conversational is True and r.valid == 4


def test_parquet_problems_name_the_row_and_field(tmp_path):
    std = [{"prompt": f"Q{i}?", "chosen": "yes", "rejected": "no"} for i in range(5)]
    std[3]["chosen"] = None
    p = only_error(validate_file(parquet(tmp_path / "s.parquet", std), "dpo"))
    assert (p.line, p.field) == (4, "chosen") and "null" in p.message
    assert "row 4, field 'chosen'" in str(p)


def test_parquet_without_a_column_says_so_once(tmp_path):
    r = validate_file(parquet(tmp_path / "q.parquet", [{"question": "a", "answer": "b"}] * 3), "dpo")
    assert [e.field for e in r.errors] == ["chosen", "rejected"]  # not once a row; the prompt may be implicit
    assert all("missing column" in e.message and "question, answer" in e.message for e in r.errors)


def test_a_damaged_parquet_file_is_a_named_problem(tmp_path):
    good = parquet(tmp_path / "g.parquet", implicit_pairs(4)).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(good[: len(good) // 2])
    p = only_error(validate_file(tmp_path / "cut.parquet", "dpo"))
    assert "not a readable Parquet file" in p.message and p.hint
    (tmp_path / "noext").write_bytes(good)  # found by its magic bytes, not its name
    assert validate_file(tmp_path / "noext", "dpo").format == "parquet"


# ---------------------------------------------------------------------------- datasets' save_to_disk

def test_a_save_to_disk_folder_and_a_dataset_dicts_train_split(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(implicit_pairs(5)).save_to_disk(str(tmp_path / "one"))
    assert len(load(tmp_path / "one", "dpo")) == 5
    DatasetDict({"train": Dataset.from_list(implicit_pairs(6)),
                 "test": Dataset.from_list(implicit_pairs(2))}).save_to_disk(str(tmp_path / "dict"))
    r = validate_file(tmp_path / "dict", "dpo")
    assert r.valid == 6 and r.format == "arrow" and any("split 'train'" in n for n in r.notes)
    assert len(load(tmp_path / "dict" / "test", "dpo")) == 2
    DatasetDict({"validation": Dataset.from_list(implicit_pairs(2))}).save_to_disk(str(tmp_path / "val"))
    p = only_error(validate_file(tmp_path / "val", "dpo"))
    assert "without a 'train' split" in p.message and "validation" in p.hint


def test_a_folder_that_is_not_a_saved_dataset_is_refused_with_what_to_give(tmp_path):
    with pytest.raises(UserError) as e:
        validate_file(tmp_path, "dpo")
    assert "is a folder, not a data file" in e.value.message and "save_to_disk" in e.value.hint
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text('{"_data_files": [{"filename": "data-0.arrow"}]}')
    p = only_error(validate_file(tmp_path / "broken", "dpo"))
    assert "missing" in p.message and "data-0.arrow" in p.message


# ---------------------------------------------------------------------------- bounded memory

def test_validate_keeps_a_sample_not_every_row_when_asked(tmp_path):
    n = SAMPLE_ROWS + 500
    rows = [{"prompt": f"Q{i}?", "chosen": "yes", "rejected": f"no {i}"} for i in range(n)]
    r = validate_file(parquet(tmp_path / "big.parquet", rows), "dpo", keep_rows=False)
    assert r.valid == n and len(r.rows) == SAMPLE_ROWS and r.sampled
    assert max(row["line"] for row in r.rows) > SAMPLE_ROWS  # the sample reaches past the first rows
    assert f"{n} valid" in format_report(r)


# ---------------------------------------------------------------------------- they train

@pytest.mark.parametrize("stage, layout", [("dpo", "parquet"), ("kto", "save_to_disk"), ("sft", "parquet")])
def test_each_layout_trains_on_the_tiny_model(tmp_path, tiny_model, stage, layout):
    if stage == "dpo":
        rows = implicit_pairs(12)
    elif stage == "kto":
        rows = [{"completion": conv(f"Q{i}?", f"A{i}."), "label": i % 2 == 0} for i in range(12)]
    else:
        rows = [{"question": f"What is {i} plus one?", "answer": f"{i + 1}."} for i in range(12)]
    if layout == "parquet":
        data = parquet(tmp_path / "data.parquet", rows)
    else:
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
        data = tmp_path / "saved"
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "train", stage, "--model", str(tiny_model), "--data", str(data),
                   "--max-steps", "2", *(("--batch", "2") if stage == "kto" else ()), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    s = only_session(root)
    assert [m["step"] for m in metrics(s)] == [1, 2]
    assert json.loads((s / "session.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_pairs_from_columns_reads_parquet_and_saved_datasets(tmp_path, layout):
    rows = [{"question": f"What is the dose of drug {i}?", "good": f"{i} mg.", "bad": f"{i * 10 + 1} mg."}
            for i in range(30)]
    if layout == "parquet":
        src = parquet(tmp_path / "cols.parquet", rows)
    else:
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(tmp_path / "cols"))
        src = tmp_path / "cols"
    r = run_rounds("--sessions", str(tmp_path / "s"), "pairs", "--from-columns", str(src), "--prompt", "question",
                   "--chosen", "good", "--rejected", "bad", "--out", str(tmp_path / "out"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    written = [json.loads(x) for name in ("train_dpo.jsonl", "val_dpo.jsonl")
               for x in (tmp_path / "out" / name).read_text().splitlines()]
    assert len(written) == 30 and {w["chosen"] for w in written} == {f"{i} mg." for i in range(30)}


def test_eval_reads_a_parquet_test_set(tmp_path, tiny_model):
    src = parquet(tmp_path / "test.parquet", [{"question": f"Q{i}?", "reference": "A."} for i in range(3)])
    r = run_rounds("--sessions", str(tmp_path / "s"), "eval", "--model", str(tiny_model), "--data", str(src),
                   "--max-new-tokens", "4", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (s,) = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    assert len((s / "results.jsonl").read_text().splitlines()) == 3
