"""KTO: unpaired desirable/undesirable examples, from a TRL file or straight from assessment marks,
trained through TRL's KTOTrainer like every other stage (planned, monitored, checkpointed,
resumable, recovering from out-of-memory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_rounds
from engine.assessment import AssessmentLog
from engine.data import validate_file
from engine.errors import UserError
from engine.session import EventTail, read_session_json

DEMO = ROOT / "engine" / "demo_data"


def only_session(root: Path, kind: str = "train") -> Path:
    found = [p for p in root.iterdir() if (p / "session.json").is_file() and read_session_json(p)["kind"] == kind]
    assert len(found) == 1, found
    return found[0]


def events(session: Path) -> list[dict]:
    return list(EventTail(session / "events.jsonl"))


def kto_file(path: Path, n: int = 24) -> Path:
    pairs = [json.loads(line) for line in (DEMO / "dpo_train.jsonl").read_text().splitlines()][:n // 2]
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p["prompt"], "completion": p["chosen"], "label": True}) + "\n")
            f.write(json.dumps({"prompt": p["prompt"], "completion": p["rejected"], "label": False}) + "\n")
    return path


# --------------------------------------------------------------------------- data


def test_kto_files_are_validated_by_line_and_field(tmp_path):
    good = tmp_path / "k.csv"
    good.write_text("prompt,completion,label\nWhat is X?,X is a drug.,1\nWhat is Y?,Y is a city.,false\n"
                    "What is Z?,I don't know Z.,desirable\n")
    r = validate_file(good, "kto")
    assert r.ok and [row["label"] for row in r.rows] == [True, False, True]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completion": "c", "label": "maybe"}) + "\n"
                   + json.dumps({"prompt": "p", "completion": "", "label": True}) + "\n"
                   + json.dumps({"prompt": [{"role": "user", "content": "p"}], "completion": "c", "label": 0}) + "\n"
                   + json.dumps({"prompt": "p", "completions": "c", "label": 0}) + "\n")
    r = validate_file(bad, "kto")
    got = {(p.line, p.field): p.message for p in r.errors}
    assert "must be true (desirable) or false" in got[(1, "label")]
    assert got[(2, "completion")] == "is empty"
    assert "mixes formats" in got[(3, "prompt")]
    assert "missing field 'completion'" in got[(4, "completion")]
    out = run_rounds("validate", str(bad), "--kind", "kto")
    assert out.returncode == 1 and "line 1, field 'label'" in out.stdout and "KTO examples" in out.stdout


# --------------------------------------------------------------------------- from marks


def _marked_session(root: Path, name: str, labels: dict[str, str], held_out: bool = False, mark: bool = True) -> Path:
    from engine.evaluate import import_results

    src = root / f"{name}.jsonl"
    with open(src, "w") as f:
        for i, label in labels.items():
            answer = {"faithful": f"Answer {i} is right.", "hallucinated": f"Answer {i} is made up.",
                      "abstained": "I don't know."}[label]
            f.write(json.dumps({"id": i, "question": f"Question {i}?", "reference": f"Answer {i} is right.",
                                "answer": answer}) + "\n")
    writer = import_results(str(src), {}, root / "sessions", name=name, held_out=held_out)
    if not mark:
        return writer.path
    with AssessmentLog(writer.path, "alice") as log:
        for i, label in labels.items():
            log.mark(i, label)
    return writer.path


def test_examples_from_marks(tmp_path):
    from engine.pairs import make_kto

    labels = {f"q{i}": ("faithful" if i % 3 == 0 else "hallucinated" if i % 3 == 1 else "abstained")
              for i in range(12)}
    s = _marked_session(tmp_path, "round", labels)
    rep = make_kto([s], tmp_path / "out", val_fraction=0.25, seed=3)
    train = [json.loads(x) for x in (tmp_path / "out" / "train_kto.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "out" / "val_kto.jsonl").read_text().splitlines()]
    rows = train + val
    assert rep["desirable"] == 4 + 8 and rep["undesirable"] == 8  # faithful + references; hallucinated + abstained
    assert rep["sources"] == {"desirable: answers judged faithful": 4, "undesirable: answers judged hallucinated": 4,
                              "undesirable: answers judged abstained": 4,
                              "desirable: references of those answers": 8}
    assert {r["completion"] for r in rows if not r["label"]} >= {"Answer q1 is made up.", "I don't know."}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}  # split by question
    assert len({r["prompt"] for r in val}) == 3 and rep["val_groups"] == 3
    pairs_session = s.parent / rep["session"]  # a pairs session, whose fingerprints let compare warn of reuse
    assert read_session_json(pairs_session)["stage"] == "from-marks"
    assert len(json.loads((pairs_session / "used_for_pairs.json").read_text())["questions"]) == 12
    assert validate_file(tmp_path / "out" / "train_kto.jsonl", "kto").ok  # what it writes, `rounds train kto` reads
    assert "desirable: 12" in (tmp_path / "out" / "pairs_report.md").read_text()
    # 12 desirable vs 8 undesirable: the undesirable weight that brings 12 x 1 / (8 x w) to 7/6, within [1, 4/3]
    assert rep["suggested_weight"] == {"--undesirable-weight": 1.29} and "--undesirable-weight 1.29" in rep["warning"]
    plain = make_kto([s], tmp_path / "plain", val_fraction=0, with_reference=False)
    assert plain["desirable"] == 4 and plain["undesirable"] == 8


def test_examples_from_marks_keep_the_test_out(tmp_path):
    from engine.pairs import make_kto

    test = _marked_session(tmp_path, "test", {"q1": "faithful", "q2": "hallucinated"}, held_out=True)
    with pytest.raises(UserError, match="held-out test set"):
        make_kto([test], tmp_path / "k")
    rnd = _marked_session(tmp_path, "round", {"q1": "faithful", "q2": "hallucinated", "q3": "hallucinated"})
    rep = make_kto([rnd], tmp_path / "k", val_fraction=0, exclude=[str(test)])
    assert rep["dropped"] == {"held out (same question text)": 2}
    assert rep["train_examples"] == 2  # q3's answer and its reference
    r = run_rounds("--sessions", str(tmp_path / "sessions"), "pairs", rnd.name, "--kto", "--refusal", "no",
                   "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "--refusal makes DPO pairs" in r.stderr
    unmarked = _marked_session(tmp_path, "unmarked", {"q1": "faithful"}, mark=False)
    r = run_rounds("--sessions", str(tmp_path / "sessions"), "pairs", unmarked.name, "--kto", "--out",
                   str(tmp_path / "y"))
    assert r.returncode == 1 and "no judged answers" in r.stderr and "rounds assess" in r.stderr


# --------------------------------------------------------------------------- training


def train(tmp_path: Path, *args: str, model: Path, data: Path | None = None, env: dict | None = None):
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "train", "kto", "--model", str(model), "--data",
                   str(data or kto_file(tmp_path / "kto.jsonl")), "--system-interval", "0.5", *args,
                   env=env, timeout=600)
    return r, root


def test_kto_from_the_demo_datas_marks_trains_checkpoints_and_resumes(tmp_path, tiny_model):
    """The loop with KTO: answers to demo questions, judged, become KTO examples; training crashes
    after a checkpoint and `rounds resume` finishes it."""
    root = tmp_path / "sessions"
    r = run_rounds("--sessions", str(root), "eval", "--model", str(tiny_model), "--data",
                   str(DEMO / "assess_questions.jsonl"), "--max-examples", "16", "--max-new-tokens", "12",
                   "--name", "round", timeout=600)
    assert r.returncode == 0, r.stderr
    ev = only_session(root, "eval")
    r = run_rounds("--sessions", str(root), "assess", ev.name, "--auto", "contains")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "kto"
    r = run_rounds("--sessions", str(root), "pairs", ev.name, "--kto", "--out", str(out), "--val-fraction", "0.2")
    assert r.returncode == 0 and "train on them: rounds train kto" in r.stdout, r.stderr
    r, _ = train(tmp_path, "--plan", "lora", "--max-steps", "4", "--save-steps", "2", "--val",
                 str(out / "val_kto.jsonl"), model=tiny_model, data=out / "train_kto.jsonl",
                 env={"ROUNDS_FAULT_CRASH_AT_STEP": "3"})
    assert r.returncode == 1
    s = only_session(root)
    assert read_session_json(s)["status"] == "failed"
    r = run_rounds("--sessions", str(root), "resume", s.name, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming from" in r.stdout and "checkpoint-2" in r.stdout
    meta = read_session_json(s)
    assert meta["status"] == "finished" and meta["plan"]["micro_batch"] >= 2
    assert "error" not in meta  # issue #17 item 10: the failure before the resume is not left beside `finished`
    assert (s / "adapter" / "adapter_model.safetensors").is_file()
    ms = [e for e in events(s) if e["type"] == "metrics"]
    assert {m["step"] for m in ms} == {1, 2, 3, 4}
    assert all("kl" in m and "loss" in m for m in ms)  # KTO's own metrics, for its charts
    assert meta["stage_info"]["charts"][0][0] == "KTO rewards"
    assert any(e.get("kind") == "checkpoint" and e.get("step") == 2 for e in events(s))


def test_kto_needs_two_examples_a_micro_batch(tmp_path, tiny_model):
    r, root = train(tmp_path, "--plan", "lora", "--batch", "1", "--max-steps", "1", model=tiny_model)
    assert r.returncode == 1 and "micro-batch of at least 2" in r.stderr and "--batch 2" in r.stderr
    assert not root.exists() or not any(root.iterdir())  # refused before any session
    r, root = train(tmp_path, "--plan", "lora", "--sft-weight", "1", model=tiny_model)
    assert r.returncode == 1 and "--sft-weight is for `rounds train dpo`" in r.stderr


def test_kto_out_of_memory_halves_down_to_two_then_fails_with_advice(tmp_path, tiny_model):
    r, root = train(tmp_path, "--plan", "lora", "--batch", "4", "--max-steps", "3", model=tiny_model,
                    env={"ROUNDS_FAULT_OOM_AT_STEP": "1", "ROUNDS_FAULT_OOM_TIMES": "2"})
    assert r.returncode == 1
    s = only_session(root)
    meta = read_session_json(s)
    oom = [e for e in events(s) if e.get("kind") == "oom_recovered"]
    assert [e["micro_batch"] for e in oom] == [[4, 2]]  # never below KTO's least micro-batch
    assert meta["status"] == "failed" and "out of memory at micro-batch 2" in meta["error"]
    assert "--precompute-ref" in r.stdout and "--plan qlora" in r.stdout  # the worker's log, followed
    assert "out of memory at micro-batch 2" in r.stderr


def test_kto_rows_are_shuffled_so_a_micro_batch_mixes_prompts():
    """TRL estimates KTO's KL term by pairing each prompt with another example's answer in its
    micro-batch; rows written question by question (answer, then its reference) must be mixed."""
    from engine.recipe import TrainSpec
    from engine.stages import get

    rows = [{"prompt": f"Q{i}?", "completion": f"{kind} {i}", "label": kind == "reference"}
            for i in range(20) for kind in ("answer", "reference")]
    spec = TrainSpec(stage="kto", model="m", data="d", seed=7)
    items = get("kto").dataset_rows(spec, rows)
    assert sorted(i["completion"][0]["content"] for i in items) == sorted(r["completion"] for r in rows)
    same = sum(items[k]["prompt"] == items[k + 1]["prompt"] for k in range(0, len(items), 2))
    assert same <= 3  # in file order all 20 micro-batches of two would share their prompt
    assert items == get("kto").dataset_rows(spec, rows)  # the same order on resume (same seed)


def test_pairs_from_marks_leave_no_temporary_copy_of_the_answers(tmp_path, monkeypatch):
    import tempfile

    from engine.pairs import make_kto
    from engine.session import SessionWriter

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    good = _marked_session(tmp_path, "round", {"q1": "faithful", "q2": "hallucinated"})
    train = SessionWriter.create(tmp_path / "sessions", "train", name="not-an-eval").path
    with pytest.raises(UserError, match="not an evaluation"):
        make_kto([good, train], tmp_path / "k")  # fails after the first session was copied
    make_kto([good], tmp_path / "k2", val_fraction=0)
    assert list((tmp_path / "tmp").iterdir()) == []
