"""Assessment marks: append-only, fsynced, last mark per (annotator, item) wins.

``assessments.jsonl`` in an eval session holds one mark a line:
``{"time", "annotator", "item", "label", "categories", "severity", "note", "score"}`` with label
``hallucinated``, ``faithful``, ``abstained`` (the answer declines to answer a question whose
reference states a fact: neither a hallucination nor a correct answer), ``unsure`` or ``clear``
(no judgement). ``score`` is set by automatic judges only (``auto:NAME``; see engine.judges). Undo appends the
mark that was current before (or ``clear``), so nothing is ever rewritten. One process at
a time may append as a given annotator (an fcntl lock; see engine.session.WriterLock).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.session import WriterLock, append_lines, file_mode
from engine.session.layout import ASSESSMENTS

LABELS = ("hallucinated", "faithful", "abstained", "unsure", "clear")
JUDGED = ("hallucinated", "faithful", "abstained")  # the labels a rate counts
CATEGORIES = {
    1: "fabrication",  # fabricated or unsupported claim
    2: "contradiction",  # factual contradiction, wrong dose or number included
    3: "negation",
    4: "cause",  # cause or mechanism misattributed
    5: "misread",  # misread question
    6: "omission",
    7: "fabricated_reference",
}
SEVERITIES = ("major", "minor")


@dataclass
class Mark:
    annotator: str
    item: str
    label: str
    categories: list[str] = field(default_factory=list)
    severity: str | None = None
    note: str = ""
    time: float = field(default_factory=lambda: round(time.time(), 3))
    undo: bool = False
    score: float | None = None

    def check(self) -> Mark:
        if self.label not in LABELS:
            raise UserError(f"label {self.label!r} is not one of {', '.join(LABELS)}")
        bad = [c for c in self.categories if c not in CATEGORIES.values()]
        if bad:
            raise UserError(f"unknown categories {bad}", hint=f"categories: {', '.join(CATEGORIES.values())}")
        if self.severity not in (None, *SEVERITIES):
            raise UserError(f"severity {self.severity!r} is not major or minor")
        if self.score is not None and not (isinstance(self.score, int | float) and 0 <= self.score <= 1):
            raise UserError(f"score {self.score!r} is not a number between 0 and 1")
        return self


@dataclass
class MarkProblem:
    line: int
    message: str


def read_marks(path: str | os.PathLike) -> tuple[list[Mark], list[MarkProblem]]:
    """Every readable mark, and the lines that could not be read (skipped, never fatal)."""
    path = Path(path)
    marks: list[Mark] = []
    problems: list[MarkProblem] = []
    if not path.exists():
        return marks, problems
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):
                problems.append(MarkProblem(n, "incomplete last line (the writer was cut off); skipped"))
                continue
            try:
                rec = json.loads(raw)
                mark = Mark(annotator=str(rec["annotator"]), item=str(rec["item"]), label=rec["label"],
                            categories=list(rec.get("categories") or []), severity=rec.get("severity"),
                            note=rec.get("note") or "", time=float(rec.get("time") or 0),
                            undo=bool(rec.get("undo", False)), score=rec.get("score")).check()
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                problems.append(MarkProblem(n, f"not valid JSON ({str(e)[:120] or type(e).__name__}); skipped"))
                continue
            except (KeyError, TypeError, ValueError, UserError) as e:
                problems.append(MarkProblem(n, f"not a valid mark ({e}); skipped"))
                continue
            marks.append(mark)
    return marks, problems


def current(marks: list[Mark]) -> dict[tuple[str, str], Mark]:
    """The state: the last mark per (annotator, item); ``clear`` removes the judgement."""
    state: dict[tuple[str, str], Mark] = {}
    for m in marks:
        key = (m.annotator, m.item)
        if m.label == "clear":
            state.pop(key, None)
        else:
            state[key] = m
    return state


def labels_by_item(marks: list[Mark], annotator: str | None = None) -> dict[str, dict[str, Mark]]:
    """item -> annotator -> current mark (optionally one annotator only)."""
    out: dict[str, dict[str, Mark]] = {}
    for (ann, item), m in current(marks).items():
        if annotator is None or ann == annotator:
            out.setdefault(item, {})[ann] = m
    return out


class AssessmentLog:
    """Appends marks for one annotator to a session's assessments file, under a writer lock."""

    def __init__(self, session: str | os.PathLike, annotator: str, lock: bool = True):
        if not annotator or not re.match(r"^[\w.:@+-]{1,64}$", annotator):
            raise UserError(f"annotator name {annotator!r} is not allowed", field="--annotator",
                            hint="use letters, digits and . _ - : @ + (e.g. your user name)")
        self.session = Path(session)
        self.path = self.session / ASSESSMENTS
        self.annotator = annotator
        self._lock = WriterLock(self.path, annotator).acquire() if lock else None
        self.marks, self.problems = read_marks(self.path)

    def _write(self, marks: list[Mark]) -> None:
        """Append checked marks in one write, fsynced: on disk before the screen moves on."""
        data = b"".join((json.dumps(asdict(m.check()), ensure_ascii=False) + "\n").encode("utf-8") for m in marks)
        # a line cut off by a crash or a full disk is ended first (read_marks reports and skips it)
        append_lines(self.path, data, file_mode(self.session))
        self.marks.extend(marks)

    def _append(self, mark: Mark) -> Mark:
        self._write([mark])
        return mark

    def mark(self, item: str, label: str, categories: list[str] | None = None, severity: str | None = None,
             note: str = "", score: float | None = None) -> Mark:
        return self._append(Mark(self.annotator, str(item), label, list(categories or []), severity, note,
                                 score=score))

    def mark_many(self, marks: list[tuple[str, str, str, float | None]]) -> int:
        """Append (item, label, note, score) marks in one write and one fsync (automatic judges)."""
        if not marks:
            return 0
        self._write([Mark(self.annotator, str(i), label, [], None, note, score=score)
                     for i, label, note, score in marks])
        return len(marks)

    def _undo_stack(self) -> list[Mark]:
        """This annotator's marks that are still in effect (each undo takes back the latest)."""
        stack: list[Mark] = []
        for m in self.marks:
            if m.annotator != self.annotator:
                continue
            if m.undo:
                if stack:
                    stack.pop()
            else:
                stack.append(m)
        return stack

    def undo(self) -> Mark | None:
        """Take back this annotator's latest mark by appending the state before it."""
        stack = self._undo_stack()
        if not stack:
            return None
        last = stack[-1]
        restored = current([m for m in stack[:-1] if m.item == last.item]).get((self.annotator, last.item))
        if restored is None:
            mark = Mark(self.annotator, last.item, "clear", undo=True)
        else:
            mark = Mark(self.annotator, last.item, restored.label, list(restored.categories), restored.severity,
                        restored.note, undo=True)
        return self._append(mark)

    def close(self) -> None:
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> AssessmentLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
