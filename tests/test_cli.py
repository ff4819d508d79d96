from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_rounds
from console.cli import build_parser
from engine import __version__

DEMO = Path(__file__).resolve().parent.parent / "engine" / "demo_data"
VERBS = ["demo", "make-tiny-model", "validate", "plan", "train", "resume", "watch", "eval", "import-results",
         "import-run", "export", "serve", "assess", "report", "compare", "pairs"]


def test_version():
    r = run_rounds("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"rounds {__version__}"


def test_help_lists_exactly_the_verbs_that_exist():
    r = run_rounds("--help")
    assert r.returncode == 0
    for verb in VERBS:
        assert verb in r.stdout
    subparsers = next(a for a in build_parser()._actions if a.dest == "verb")
    assert sorted(subparsers.choices) == sorted(VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_an_example(verb):
    r = run_rounds(verb, "--help")
    assert r.returncode == 0
    assert "example:\n  rounds " + verb in r.stdout


def test_no_verb_prints_help():
    r = run_rounds()
    assert r.returncode == 0 and "verbs:" in r.stdout


def test_validate_ok_and_failing_exit_codes(tmp_path):
    ok = run_rounds("validate", str(DEMO / "dpo_train.jsonl"), "--kind", "dpo")
    assert ok.returncode == 0 and "OK: 0 error(s)" in ok.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
    r = run_rounds("validate", str(bad), "--kind", "sft")
    assert r.returncode == 1
    assert f"{bad}, line 2, field 'answer': error: missing field 'answer'" in r.stdout
    assert "hint: add it, or map another field: --answer NAME" in r.stdout


def test_validate_json_output_and_column_mapping(tmp_path):
    f = tmp_path / "results.csv"
    f.write_text("Q,Gold\nwhat?,that.\n")
    r = run_rounds("validate", str(f), "--kind", "test", "--question", "Q", "--reference", "Gold", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["valid_rows"] == 1 and report["errors"] == 0


def test_validate_with_model_prints_token_lengths(tiny_model):
    r = run_rounds("validate", str(DEMO / "sft_train.jsonl"), "--kind", "sft", "--model", str(tiny_model),
                   "--max-length", "20")
    assert r.returncode == 0, r.stderr
    assert "tokens prompt: min" in r.stdout and "over --max-length 20" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["validate", "/nonexistent/x.jsonl", "--kind", "sft"], "no such file"),
    (["validate", str(DEMO / "sft_train.jsonl"), "--kind", "sft", "--model", "/nonexistent"], "not a model folder"),
    (["make-tiny-model", str(DEMO)], "not empty"),
])
def test_user_errors_are_one_clear_message_and_no_traceback(args, message):
    r = run_rounds(*args)
    assert r.returncode == 1
    assert r.stderr.startswith("rounds: error: ") and message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_usage_errors_exit_2():
    r = run_rounds("validate", "x.jsonl")
    assert r.returncode == 2 and "--kind" in r.stderr


def test_make_tiny_model_writes_a_model(tmp_path):
    out = tmp_path / "m"
    r = run_rounds("make-tiny-model", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote tiny model to {out}: 2.0 M parameters")
    assert json.loads((out / "rounds_tiny_model.json").read_text())["seed"] == 3
    assert "Writing model shards" not in r.stdout + r.stderr  # no progress-bar noise


def test_global_options_work_before_and_after_the_verb(tmp_path):
    parser = build_parser()
    a = parser.parse_args(["--sessions", "X", "validate", "f", "--kind", "sft"])
    b = parser.parse_args(["validate", "f", "--kind", "sft", "--sessions", "Y", "--shared-sessions"])
    assert a.sessions == "X" and a.shared_sessions is False
    assert b.sessions == "Y" and b.shared_sessions is True
