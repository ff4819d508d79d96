"""The records of a session folder: evaluation results (``results.jsonl``, one answer a line) and
their CSV; the marks' CSV export. Readers and writers of the files, for the engine and the
console alike (marks themselves: ``engine.assessment``, append-only with a writer lock)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from engine.session import append_lines, file_mode, is_text
from engine.session.layout import ASSESSMENTS, ASSESSMENTS_CSV, RESULTS, RESULTS_CSV

CSV_FIELDS = ["id", "question", "context", "reference", "answer", "model", "truncated", "new_tokens",
              "flag_count", "numbers_absent", "terms_absent"]


REQUIRED_RESULT_FIELDS = ("id", "question", "reference")
OPTIONAL_TEXT_FIELDS = ("answer", "context", "model", "adapter")  # text or null


def result_problem(rec: dict) -> str | None:
    """Why a results record cannot be used (a field named), or None. Every reader of results
    (report, pairs, the assessment screen) relies on these types."""
    for k in REQUIRED_RESULT_FIELDS:
        v = rec.get(k)
        if not (is_text(v) or (k == "id" and isinstance(v, int) and not isinstance(v, bool))):
            return f"no text {k!r}" if v is None else f"{k!r} is {type(v).__name__}, not text"
    for k in OPTIONAL_TEXT_FIELDS:
        if rec.get(k) is not None and not is_text(rec[k]):
            return f"{k!r} is {type(rec[k]).__name__}, not text"
    samples = rec.get("samples")
    if samples is not None and not (isinstance(samples, list) and all(is_text(x) for x in samples)):
        return "'samples' is not a list of texts"
    return None


_FLAG_TYPES = {"count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
               "numbers_absent": lambda v: isinstance(v, list) and all(is_text(x) for x in v),
               "terms_absent": lambda v: isinstance(v, list) and all(is_text(x) for x in v),
               "empty": lambda v: isinstance(v, bool), "truncated": lambda v: isinstance(v, bool),
               "repetitive": lambda v: isinstance(v, bool),
               "length_ratio": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e9}


def clean_bookkeeping(rec: dict) -> dict:
    """The pre-screen flags and generation details are derived (they order and highlight, never
    decide): a part of the wrong type is dropped, the answer kept."""
    flags = rec.get("flags")
    rec["flags"] = {k: v for k, v in flags.items() if k in _FLAG_TYPES and _FLAG_TYPES[k](v)} \
        if isinstance(flags, dict) else {}
    if not isinstance(rec.get("generation"), (dict, type(None))):
        rec["generation"] = None
    if not (rec.get("new_tokens") is None or (isinstance(rec["new_tokens"], int)
                                              and not isinstance(rec["new_tokens"], bool))):
        rec["new_tokens"] = None
    if not isinstance(rec.get("truncated", False), bool):
        rec["truncated"] = False
    return rec


def read_results(session: Path, problems: list[str] | None = None) -> list[dict]:
    """The answers of an eval session, in file order. A line cut off at the end (a crash mid-append)
    is left for the evaluation to redo; any other line that is not a JSON object with a text ``id``
    and ``question`` is skipped and, when ``problems`` is given, described there by line (never
    silently: the report and `assess` say how many were skipped)."""
    path = Path(session) / RESULTS
    out: list[dict] = []
    if not path.exists():
        return out
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # a line cut off by a crash: that item is simply done again
            why = None
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                why = f"not UTF-8 (byte {e.start + 1})"
            except (json.JSONDecodeError, RecursionError) as e:
                why = f"not valid JSON ({str(e)[:80]})" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            else:
                if not isinstance(rec, dict):
                    why = f"a JSON {type(rec).__name__}, not an object"
                else:
                    why = result_problem(rec)
                    if why is None:
                        rec["id"] = str(rec["id"])
                        out.append(clean_bookkeeping(rec))
            if why and problems is not None:
                problems.append(f"{path}, line {n}: {why}; the line is skipped")
    return out


def append_results(session: Path, records: list[dict]) -> None:
    data = b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in records)
    append_lines(session / RESULTS, data, file_mode(session))


def write_csv(session: Path) -> Path:
    rows = read_results(session)
    path = session / RESULTS_CSV
    tmp = session / f".{RESULTS_CSV}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode(session))
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            fl = r.get("flags") or {}
            w.writerow([r.get("id"), r.get("question"), r.get("context") or "", r.get("reference"), r.get("answer"),
                        r.get("model"), r.get("truncated"), r.get("new_tokens"), fl.get("count", 0),
                        "; ".join(fl.get("numbers_absent", [])), "; ".join(fl.get("terms_absent", []))])
    os.replace(tmp, path)
    return path


def repair_results(session: Path) -> int:
    """Cut a half-written last line (a crash mid-append) so new lines start clean; returns bytes cut."""
    path = Path(session) / RESULTS
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        pos = size
        while pos > 0:  # find the last newline, reading backwards in blocks
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def export_marks_csv(session: Path) -> Path:
    """``assessments.csv``: every mark, undos included, for a spreadsheet."""
    from engine.assessment import read_marks

    marks, _ = read_marks(Path(session) / ASSESSMENTS)
    path = Path(session) / ASSESSMENTS_CSV
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["time", "annotator", "item", "label", "categories", "severity", "note", "undo", "score"])
        for m in marks:
            w.writerow([m.time, m.annotator, m.item, m.label, ";".join(m.categories), m.severity or "", m.note,
                        m.undo, "" if m.score is None else m.score])
    path.chmod(file_mode(session))
    return path
