"""Fuzz every reader rounds has with generated malformed input; count internal errors.

    python bench/fuzz_readers.py                 # 10,000 cases for each reader
    python bench/fuzz_readers.py --cases 500 --reader marks

A *reader* is everything a user's command or screen does with one kind of file: ``data`` is
``rounds validate`` and ``rounds assess FILE`` (import) on JSONL/JSON/CSV/TSV/Parquet files of every data
kind; ``sources`` is ``rounds pairs --from-columns`` / ``--from-labels`` on a CSV or JSONL source;
``config`` is ``rounds plan`` and the model-folder pre-check on a ``config.json`` (and a
safetensors header); ``session`` is Home's listing and rows, the Monitor's title, and ``rounds
report`` on a ``session.json``; ``events`` is the Monitor (tail, state, every panel's text) and
Home's progress on an ``events.jsonl``; ``results`` and ``marks`` are ``rounds report``, ``rounds
pairs`` and the assessment screen's model on ``results.jsonl`` and ``assessments.jsonl``.

Inputs are made by hypothesis from real records: fields dropped, replaced by any JSON value (NaN,
huge integers, lone surrogates, nested lists), keys added, records that are not objects, then the
bytes cut, spliced, nested 5,000 deep, made not UTF-8, given a BOM or CRLF. Each case ends in one of:

- ``refused``: a clear ``UserError`` (what the user sees as ``rounds: error: ...``);
- ``read``: read tolerantly (damaged parts skipped and reported);
- an **internal error**: any other exception — a bug. The count must be 0.

The same strategies and readers run in CI as ``tests/test_fuzz.py`` with a short profile.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.errors import UserError  # noqa: E402

# --------------------------------------------------------------------------- values

_leaf = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70), st.sampled_from([0, -1, 1, 2**63, -2**31]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -0.0, 1e308]),
    st.text(max_size=12), st.sampled_from(["", " ", "\ud800", "a\x00b", "line\nbreak", "é", "12", "true", "null"]),
)
JSON = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=8)


@st.composite
def mutated(draw, templates: list[dict]) -> object:
    """A record like one of ``templates`` with fields kept, dropped or replaced by any JSON value,
    nested objects and lists changed the same way."""
    tmpl = draw(st.sampled_from(templates))
    if draw(st.integers(0, 14)) == 0:
        return draw(JSON)  # not an object at all
    rate = draw(st.sampled_from([1, 5, 20]))  # in 40: a field or two changed, or many
    return draw(_changed(tmpl, rate, 3))


@st.composite
def _changed(draw, value: object, rate: int, depth: int) -> object:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            op = draw(st.integers(0, 39))
            if op >= rate:
                out[k] = draw(_changed(v, rate, depth - 1)) if depth > 0 and isinstance(v, (dict, list)) else v
            elif op % 3 == 0:
                continue
            else:
                out[k] = draw(JSON)
        if draw(st.integers(0, 39)) < rate:
            out[draw(st.text(max_size=6))] = draw(JSON)
        return out
    if isinstance(value, list):
        return [draw(_changed(v, rate, depth - 1)) if depth > 0 and draw(st.integers(0, 39)) >= rate else
                (draw(JSON) if draw(st.integers(0, 39)) < rate else v) for v in value]
    return value


def dumps(rec: object) -> str:
    return json.dumps(rec)  # NaN and Infinity as Python writes them; lone surrogates escaped


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` as a crash, a bad copy or an editor might leave it."""
    op = draw(st.integers(0, 11))
    if op <= 4 or not data:
        pass
    elif op == 5:  # cut short
        data = data[:draw(st.integers(0, len(data)))]
    elif op == 6:  # bytes spliced in
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(max_size=8)) + data[i:]
    elif op == 7:  # deeply nested JSON on a line of its own
        depth = draw(st.sampled_from([100, 5000, 50000]))
        i = draw(st.integers(0, len(data)))
        data = data[:i] + b"\n" + b"[" * depth + b"]" * depth + b"\n" + data[i:]
    elif op == 8:  # not UTF-8
        i = draw(st.integers(0, len(data)))
        data = data[:i] + b"\xff\xfe\xc3" + data[i:]
    elif op == 9:
        data = b"\xef\xbb\xbf" + data
    elif op == 10:
        data = data.replace(b"\n", b"\r\n")
    else:
        data = draw(st.binary(max_size=64))
    return data


@st.composite
def jsonl(draw, templates: list[dict], max_lines: int = 5) -> bytes:
    recs = draw(st.lists(mutated(templates), max_size=max_lines))
    text = "\n".join(dumps(r) for r in recs)
    if recs and draw(st.integers(0, 4)):
        text += "\n"
    return draw(damaged(text.encode("utf-8", "surrogatepass")))


# --------------------------------------------------------------------------- templates (real records)

MSG = [{"role": "user", "content": "What is the capital?"}]
DATA_TEMPLATES = {
    "sft": [{"id": "a1", "question": "What is the capital?", "answer": "Paris.", "context": "France"},
            {"question": "Name it.", "answer": "It is Ada."}],
    "test": [{"id": "t1", "question": "What is the capital?", "reference": "Paris.", "context": None},
             {"question": "Dose?", "reference": "5 mg", "answer": "5 mg"}],
    "dpo": [{"id": "p1", "prompt": "What is the capital?", "chosen": "Paris.", "rejected": "Lyon."},
            {"prompt": MSG, "chosen": [{"role": "assistant", "content": "Paris."}],
             "rejected": [{"role": "assistant", "content": "Lyon."}]}],
    "kto": [{"id": "k1", "prompt": "What is the capital?", "completion": "Paris.", "label": True},
            {"prompt": MSG, "completion": [{"role": "assistant", "content": "Lyon."}], "label": "undesirable"}],
}

RESULT = {"id": "q0", "question": "What is the dose of the drug?", "context": None, "reference": "5 mg daily.",
          "answer": "It is 5 mg daily.", "model": "(imported)", "adapter": None, "generation": {"imported_from": "x"},
          "new_tokens": None, "truncated": False,
          "flags": {"numbers_absent": [], "terms_absent": [], "empty": False, "truncated": False,
                    "repetitive": False, "length_ratio": 1.0, "count": 0}}
RESULT_SAMPLES = {**RESULT, "id": "q1", "samples": ["It is 5 mg.", "It is 7 mg daily."]}
MARKS = [{"annotator": "ann", "item": "q0", "label": "hallucinated", "categories": ["fabricated-fact"],
          "severity": "major", "note": "wrong dose", "time": 1796040538.0, "undo": False, "score": None},
         {"annotator": "auto:contains", "item": "q1", "label": "faithful", "categories": [], "severity": None,
          "note": "", "time": 1796040539.0, "undo": False, "score": 0.0},
         {"annotator": "ann", "item": "q1", "label": "abstained", "time": 1796040540.0, "undo": True}]

SESSION_EVAL = {"format": 1, "id": "20261130-120857-eval-x", "name": "x", "kind": "eval", "stage": "eval",
                "status": "finished", "command": ["rounds", "assess", "x.csv"], "config": {"model": "(imported)"},
                "plan": None, "pid": 1, "host": "elsewhere", "shared": False, "created": "2026-11-30T12:08:57+00:00",
                "started": None, "ended": "2026-11-30T12:08:58+00:00", "items": 2, "held_out": False}
SESSION_TRAIN = {"format": 1, "id": "20261130-121142-train-sft", "name": "sft", "kind": "train", "stage": "sft",
                 "status": "running", "command": ["rounds", "train", "sft"], "world_size": 1,
                 "config": {"stage": "sft", "model": "m", "data": "d", "plan": "lora", "options": {}},
                 "plan": {"name": "lora", "precompute_ref": False, "micro_batch": 4, "predicted_peak_bytes": 15363224},
                 "stage_info": {"unit": "step", "charts": [["rewards", ["rewards/margins", "rewards/accuracies"]]],
                                "series": {"rewards/margins": "reward margin"}},
                 "pid": 1, "host": "elsewhere", "created": "2026-11-30T12:11:42+00:00",
                 "started": "2026-11-30T12:11:43+00:00", "ended": None}

EVENTS = [
    {"time": 1796040706.7, "type": "event", "kind": "warning", "message": "paged 8-bit AdamW needs CUDA"},
    {"time": 1796040706.7, "type": "event", "kind": "plan", "plan": "lora", "device": "cpu", "bf16": False,
     "predicted_peak_bytes": 15363224, "chosen_by": "user", "micro_batch": 4, "grad_accum": 1, "max_length": 512},
    {"time": 1796040706.8, "type": "system", "gpus": [{"index": 0, "mem_used": 1.2e9, "mem_total": 1.2e10, "util": 50,
                                                        "temp_c": 60, "power_w": 200, "name": "GPU"}],
     "process": {"pid": 2, "rss": 538718208, "cpu_percent": 0.0, "threads": 5}, "rank": 0,
     "host": {"ram_used": 1579573248, "ram_total": 25276059648, "cpu_percent": 10.0, "cpus": 2}},
    {"time": 1796040706.9, "type": "event", "kind": "data", "train_rows": 400, "val_rows": 0,
     "tokens": {"total": {"min": 21, "median": 26, "max": 30, "over_max_length": 0}}, "max_length": 512},
    {"time": 1796040707.4, "type": "status", "status": "running"},
    {"time": 1796040707.8, "type": "metrics", "step": 1, "max_steps": 4, "loss": 6.97, "grad_norm": 2.58,
     "learning_rate": 0.0002, "epoch": 0.01, "seconds_per_step": 0.0658, "eta_seconds": 0.2,
     "tokens_per_second": 900.0, "unit": "step"},
    {"time": 1796040707.9, "type": "event", "kind": "checkpoint", "path": "/x/checkpoint-2", "step": 2,
     "seconds": 0.033, "reason": "every --save-steps"},
    {"time": 1796040708.0, "type": "event", "kind": "oom_recovered", "step": 3, "micro_batch": 2, "grad_accum": 2},
    {"time": 1796040708.1, "type": "eval", "step": 4, "eval_loss": 5.1},
    {"time": 1796040708.2, "type": "event", "kind": "finished", "step": 4, "outputs": {"adapter": "/x/adapter"},
     "train_runtime": 0.293},
    {"time": 1796040708.3, "type": "event", "kind": "error", "message": "boom", "rank": 1},
    {"time": 1796040708.4, "type": "progress", "step": 3, "max_steps": 10, "unit": "items", "items_per_second": 2.5},
]

CONFIG_DIR = ROOT / "tests" / "fixtures" / "configs"
TINY_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
               "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 16, "vocab_size": 512, "max_position_embeddings": 2048, "tie_word_embeddings": False,
               "rms_norm_eps": 1e-5, "torch_dtype": "float32"}


def config_templates() -> list[dict]:
    out = [TINY_CONFIG]
    for f in sorted(CONFIG_DIR.glob("*.json")):
        out.append(json.loads(f.read_text()))
    return out


# --------------------------------------------------------------------------- calling rounds as a user does

def rounds(*argv: str) -> int:
    """``rounds ARGV`` in this process; a bug raises (ROUNDS_DEBUG), a refusal returns its exit code."""
    from console.cli import main

    os.environ["ROUNDS_DEBUG"] = "1"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return main(list(argv))
        except SystemExit as e:  # argparse refusing an argument
            return int(e.code or 0)


def tolerate(fn: Callable[[], object]) -> str:
    try:
        fn()
    except UserError:
        return "refused"
    return "read"


# --------------------------------------------------------------------------- readers

@dataclass
class Reader:
    name: str
    what: str
    strategy: st.SearchStrategy
    run: Callable[[object, Path], str]  # (case, empty work folder) -> "refused" | "read"; a bug raises


def _data_case():
    @st.composite
    def case(draw):
        kind = draw(st.sampled_from(sorted(DATA_TEMPLATES)))
        fmt = draw(st.sampled_from(["jsonl", "json", "csv", "tsv", "parquet"]))
        templates = DATA_TEMPLATES[kind]
        if fmt == "parquet":  # records of any shape pyarrow will write, then the bytes damaged or not
            recs = [r for r in draw(st.lists(mutated(templates), max_size=4)) if isinstance(r, dict)]
            data = draw(damaged(_parquet_bytes(recs)))
        elif fmt == "jsonl":
            data = draw(jsonl(templates))
        elif fmt == "json":
            recs = draw(st.lists(mutated(templates), max_size=4))
            top = recs if draw(st.integers(0, 5)) else draw(JSON)
            data = draw(damaged(dumps(top).encode("utf-8", "surrogatepass")))
        else:
            fields = list(templates[0])
            header = draw(st.lists(st.sampled_from(fields + ["", "extra"]), max_size=6)) \
                if draw(st.integers(0, 3)) == 0 else fields
            cell = st.one_of(st.text(max_size=10), st.sampled_from(["", "\"", ",", "\t", "a\nb", "true", "0"]))
            rows = draw(st.lists(st.lists(cell, max_size=len(header) + 2), max_size=4))
            buf = io.StringIO()
            w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t")
            w.writerow(header)
            w.writerows(rows)
            data = draw(damaged(buf.getvalue().encode("utf-8", "surrogatepass")))
        return kind, fmt, data
    return case()


def _parquet_bytes(recs: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(recs)
    except Exception:  # noqa: BLE001 - values pyarrow cannot type together: each as its JSON text
        table = pa.Table.from_pylist([{str(k): dumps(v) for k, v in r.items()} for r in recs])
    buf = pa.BufferOutputStream()
    try:
        pq.write_table(table, buf)
    except Exception:  # noqa: BLE001 - e.g. a struct with no fields: an empty file instead
        pq.write_table(pa.table({"x": pa.array([], pa.string())}), buf)
    return buf.getvalue().to_pybytes()


def _run_data(case, work: Path) -> str:
    kind, fmt, data = case
    f = work / f"data.{fmt}"
    f.write_bytes(data)
    rc = rounds("validate", str(f), "--kind", kind)
    if kind == "test":  # the same file imported as results (rounds assess FILE)
        rounds("--sessions", str(work / "sessions"), "assess", str(f), "--auto", "contains")
    return "refused" if rc else "read"


SOURCE_TEMPLATES = {
    "columns": [{"id": "r1", "question": "What is the dose?", "good": "5 mg.", "bad": "50 mg.", "context": "label"},
                {"question": "Who?", "good": "Ada.", "bad": "Bob."}],
    "labels": [{"group": "dose of X", "text": "X is 5 mg.", "label": "factual"},
               {"group": "dose of X", "text": "X is 50 mg.", "label": "not factual"}],
}


def _source_case():
    @st.composite
    def case(draw):
        mode = draw(st.sampled_from(sorted(SOURCE_TEMPLATES)))
        templates = SOURCE_TEMPLATES[mode]
        fmt = draw(st.sampled_from(["jsonl", "csv"]))
        if fmt == "jsonl":
            data = draw(jsonl(templates, max_lines=6))
        else:
            fields = list(templates[0])
            rows = draw(st.lists(mutated(templates), max_size=6))
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(fields)
            for r in rows:
                w.writerow([r.get(f, "") if isinstance(r, dict) else r for f in fields])
            data = draw(damaged(buf.getvalue().encode("utf-8", "surrogatepass")))
        return mode, fmt, data, draw(st.booleans())
    return case()


def _run_source(case, work: Path) -> str:
    """`rounds pairs --from-columns` / `--from-labels` on a generated source file."""
    mode, fmt, data, kto = case
    f = work / f"source.{fmt}"
    f.write_bytes(data)
    args = ["--from-columns", str(f), "--prompt", "question", "--chosen", "good", "--rejected", "bad",
            "--context", "context", "--id", "id"] if mode == "columns" else \
        ["--from-labels", str(f), "--group", "group", "--text", "text", "--label", "label"]
    rc = rounds("--sessions", str(work / "sessions"), "pairs", *args, "--out", str(work / "out"),
                *(["--kto"] if kto and mode == "columns" else []))
    return "refused" if rc else "read"


def _config_case():
    @st.composite
    def case(draw):
        cfg = draw(mutated(config_templates()))
        data = draw(damaged(dumps(cfg).encode("utf-8", "surrogatepass")))
        header = {"model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]},
                  "__metadata__": {"format": "pt"}}
        header = draw(mutated([header]))
        hb = dumps(header).encode("utf-8", "surrogatepass")
        size = draw(st.sampled_from([len(hb), 0, len(hb) + 5, 2**40, -1 % 2**64]))
        weights = draw(damaged(size.to_bytes(8, "little") + hb + b"\x00" * 32))
        stage = draw(st.sampled_from(["sft", "dpo", "kto"]))
        return data, weights, stage
    return case()


def _run_config(case, work: Path) -> str:
    data, weights, stage = case
    model = work / "model"
    model.mkdir()
    (model / "config.json").write_bytes(data)
    (model / "model.safetensors").write_bytes(weights)
    (model / "tokenizer.json").write_text("{}")
    rc = rounds("plan", "--model", str(model / "config.json"), "--stage", stage, "--gpu-mem", "12GiB",
                "--pairs", "100", "--max-length", "256")
    from engine.recipe import check_model_folder

    tolerate(lambda: check_model_folder(str(model)))
    return "refused" if rc else "read"


def _eval_session(work: Path, meta: dict | bytes | None = None, results: bytes | None = None,
                  marks: bytes | None = None, events: bytes | None = None) -> Path:
    s = work / "sessions" / SESSION_EVAL["id"]
    s.mkdir(parents=True)
    (s / "session.json").write_bytes(meta if isinstance(meta, bytes) else dumps(meta or SESSION_EVAL).encode())
    (s / "results.jsonl").write_bytes(results if results is not None else
                                      (dumps(RESULT) + "\n" + dumps(RESULT_SAMPLES) + "\n").encode())
    (s / "assessments.jsonl").write_bytes(marks if marks is not None else
                                          "".join(dumps(m) + "\n" for m in MARKS).encode())
    (s / "events.jsonl").write_bytes(events if events is not None else b"")
    return s


def _judge_screens(s: Path) -> None:
    """What a person's commands do with an eval session: report, pairs (DPO and KTO), the assess model."""
    rounds("--sessions", str(s.parent), "report", str(s))
    rounds("--sessions", str(s.parent), "pairs", str(s), "--out", str(s.parent.parent / "pairs"))
    rounds("--sessions", str(s.parent), "pairs", str(s), "--kto", "--out", str(s.parent.parent / "kto"))

    def assess():
        from console.assess_state import AssessModel

        m = AssessModel(s, "ann")
        try:
            m.stats()
            m.visible()
            for _ in range(len(m.visible()) + 1):
                m.cycle_filter()
                m.visible()
            m.cycle_order()
            m.visible()
            m.current_details()
            if m.item is not None:
                m.mark("hallucinated")
                m.undo()
        finally:
            m.close()
    tolerate(assess)


def _run_results(case, work: Path) -> str:
    s = _eval_session(work, results=case)
    _judge_screens(s)
    return "read"


def _run_marks(case, work: Path) -> str:
    s = _eval_session(work, marks=case)
    _judge_screens(s)
    return "read"


def _session_case():
    @st.composite
    def case(draw):
        meta = draw(mutated([SESSION_EVAL, SESSION_TRAIN]))
        return draw(damaged(dumps(meta).encode("utf-8", "surrogatepass")))
    return case()


def _home_and_monitor(root: Path, session: Path) -> None:
    """Home's rows and every Monitor panel's text, as the screens draw them (without a terminal)."""
    from console.screens.home import home_rows
    from console.screens.monitor import header_text
    from console.state import MonitorState, chart_sets, series_label, stage_info
    from console.widgets.chart import chart_text
    from console.widgets.eventlog import eventlog_text
    from console.widgets.memory import memory_text
    from console.widgets.system import system_text
    from engine.session import EventTail, list_sessions, read_session_json

    now = 1796040800.0
    home_rows(list_sessions(root), now, set(), {})
    state = MonitorState()
    try:
        state.meta = read_session_json(session)
    except UserError:
        pass
    state.feed(EventTail(session / "events.jsonl").read())
    for width in (100, 30):
        header_text(state, session.name, now, width)
        memory_text(state, (state.meta.get("plan") or {}).get("predicted_peak_bytes"), width)
        system_text(state, width)
        eventlog_text(list(state.lines), ["FAILED: x"], width, 6)
        info = stage_info(state.meta)
        for _, keys in chart_sets(info):
            for key in keys:
                chart_text(series_label(info, key), state.series[key], width, 8)


def _run_session(case, work: Path) -> str:
    s = _eval_session(work, meta=case, events=(dumps(EVENTS[4]) + "\n" + dumps(EVENTS[5]) + "\n").encode())
    _home_and_monitor(s.parent, s)
    rc = rounds("--sessions", str(s.parent), "report", str(s))
    return "refused" if rc else "read"


def _run_events(case, work: Path) -> str:
    s = _eval_session(work, meta=dumps(SESSION_TRAIN).encode(), events=case)
    _home_and_monitor(s.parent, s)
    return "read"


READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("data", "data files (JSONL/JSON/CSV/TSV/Parquet) for validate and import", _data_case(), _run_data),
    Reader("sources", "pair sources (pairs --from-columns / --from-labels)", _source_case(), _run_source),
    Reader("config", "config.json and safetensors header (plan, model pre-check)", _config_case(), _run_config),
    Reader("session", "session.json (Home, Monitor, report)", _session_case(), _run_session),
    Reader("events", "events.jsonl (Monitor, Home)", jsonl(EVENTS, max_lines=8), _run_events),
    Reader("results", "results.jsonl (report, pairs, assess)", jsonl([RESULT, RESULT_SAMPLES]), _run_results),
    Reader("marks", "assessments.jsonl (report, pairs, assess)", jsonl(MARKS), _run_marks),
)}


def run_case(reader: Reader, case) -> str:
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{reader.name}-"))
    try:
        return reader.run(case, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fuzz(reader: Reader, cases: int, seed: int = 0) -> dict:
    """Run ``cases`` generated inputs through one reader; count outcomes and internal errors."""
    counts: Counter = Counter()
    errors: list[str] = []

    @settings(max_examples=cases, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(reader.strategy)
    def one(case):
        try:
            counts[run_case(reader, case)] += 1
        except Exception as e:  # noqa: BLE001 - this is what the bench counts
            counts["internal error"] += 1
            if len(errors) < 5:
                errors.append(f"{type(e).__name__}: {e}\n  case: {case!r}"[:600] + "\n"
                              + "".join(traceback.format_exc(limit=-3)))

    from hypothesis import seed as hseed

    hseed(seed)(one)()
    return {"cases": sum(counts.values()), **counts, "examples": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="generated cases for each reader (default 10,000)")
    ap.add_argument("--reader", choices=sorted(READERS), action="append", help="only these readers")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("ROUNDS_CACHE", tempfile.mkdtemp(prefix="fuzz-cache-"))
    total_errors = 0
    print(f"{'reader':8} {'cases':>7} {'refused':>8} {'read':>7} {'internal errors':>16}  seconds  what")
    for name in args.reader or list(READERS):
        reader = READERS[name]
        t = time.perf_counter()
        r = fuzz(reader, args.cases, args.seed)
        total_errors += r.get("internal error", 0)
        print(f"{name:8} {r['cases']:>7,} {r.get('refused', 0):>8,} {r.get('read', 0):>7,} "
              f"{r.get('internal error', 0):>16,}  {time.perf_counter() - t:7.0f}  {reader.what}", flush=True)
        for e in r["examples"]:
            print("    " + e.replace("\n", "\n    "))
    print(f"internal errors: {total_errors} (target 0: {'MET' if total_errors == 0 else 'NOT MET'})")
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
