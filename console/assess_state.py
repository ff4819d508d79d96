"""The assessment screen's model: items, this annotator's marks, position, filters (no Textual here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.assessment import CATEGORIES, AssessmentLog, Mark, current, read_marks
from engine.errors import SessionLockedError
from engine.evaluate import read_results
from engine.stats import items_for_half_width, wilson_interval

FILTERS = ("all", "unassessed", "hallucinated", "unsure", "flagged", "disagreements")


@dataclass
class Draft:
    """Categories, severity and note chosen before the item has a label."""

    categories: list[str] = field(default_factory=list)
    severity: str | None = None
    note: str = ""


class AssessModel:
    def __init__(self, session: Path, annotator: str, blind: bool = False):
        self.session = Path(session)
        self.annotator = annotator
        self.blind = blind
        self.items = read_results(self.session)
        try:
            from engine.session import read_session_json

            self.name = read_session_json(self.session).get("name") or self.session.name
        except Exception:
            self.name = self.session.name
        self.index_of = {r["id"]: i for i, r in enumerate(self.items)}
        self.readonly_reason: str | None = None
        try:
            self.log: AssessmentLog | None = AssessmentLog(self.session, annotator)
            self.marks, self.problems = self.log.marks, self.log.problems
        except SessionLockedError as e:
            self.log = None
            self.readonly_reason = f"read-only: {e.message}"
            self.marks, self.problems = read_marks(self.session / "assessments.jsonl")
        self.filter = "all"
        self.drafts: dict[str, Draft] = {}
        self.pos = self.first_unassessed()

    # ----------------------------------------------------------------- state

    def state(self) -> dict[tuple[str, str], Mark]:
        return current(self.marks)

    def mine(self, item_id: str) -> Mark | None:
        return self.state().get((self.annotator, item_id))

    def others(self, item_id: str) -> list[Mark]:
        if self.blind:
            return []
        return [m for (a, i), m in self.state().items() if i == item_id and a != self.annotator]

    @property
    def item(self) -> dict | None:
        return self.items[self.pos] if self.items else None

    def first_unassessed(self) -> int:
        state = self.state()
        for i, r in enumerate(self.items):
            if (self.annotator, r["id"]) not in state:
                return i
        return max(0, len(self.items) - 1)

    def stats(self) -> dict:
        mine = [m for (a, _), m in self.state().items() if a == self.annotator]
        k = sum(m.label == "hallucinated" for m in mine)
        n = sum(m.label in ("hallucinated", "faithful") for m in mine)
        lo, hi = wilson_interval(k, n)
        need = items_for_half_width(k / n if n else 0.5, 0.10)
        return {"assessed": len(mine), "total": len(self.items), "hallucinated": k, "judged": n,
                "rate": k / n if n else None, "lo": lo, "hi": hi, "more": max(0, need - n),
                "unsure": sum(m.label == "unsure" for m in mine)}

    # ----------------------------------------------------------------- marking

    def _require_writable(self) -> None:
        if self.log is None:
            raise PermissionError(self.readonly_reason or "read-only")

    def mark(self, label: str) -> Mark:
        """Label the current item (fsynced before returning) and move to the next one."""
        self._require_writable()
        item = self.item
        draft = self.drafts.pop(item["id"], None)
        prev = self.mine(item["id"])
        cats = draft.categories if draft else (prev.categories if prev else [])
        severity = draft.severity if draft else (prev.severity if prev else None)
        note = draft.note if draft else (prev.note if prev else "")
        if label != "hallucinated":  # categories and severity describe a hallucination
            cats, severity = [], None
        m = self.log.mark(item["id"], label, cats, severity, note)
        self.move(1)
        return m

    def _amend(self, **changes) -> None:
        """Change categories/severity/note: a new mark if the item has one, else the draft."""
        self._require_writable()
        item = self.item
        prev = self.mine(item["id"])
        if prev is None:
            d = self.drafts.setdefault(item["id"], Draft())
            for k, v in changes.items():
                setattr(d, k, v)
            return
        fields = {"categories": list(prev.categories), "severity": prev.severity, "note": prev.note, **changes}
        self.log.mark(item["id"], prev.label, fields["categories"], fields["severity"], fields["note"])

    def current_details(self) -> Draft:
        item = self.item
        prev = self.mine(item["id"]) if item else None
        if prev is not None:
            return Draft(list(prev.categories), prev.severity, prev.note)
        return self.drafts.get(item["id"], Draft()) if item else Draft()

    def toggle_category(self, number: int) -> None:
        name = CATEGORIES[number]
        cats = self.current_details().categories
        cats = [c for c in cats if c != name] if name in cats else cats + [name]
        self._amend(categories=cats)

    def cycle_severity(self) -> None:
        order = [None, "major", "minor"]
        sev = self.current_details().severity
        self._amend(severity=order[(order.index(sev) + 1) % 3])

    def set_note(self, note: str) -> None:
        self._amend(note=note)

    def undo(self) -> Mark | None:
        self._require_writable()
        m = self.log.undo()
        if m is not None and m.item in self.index_of:
            self.pos = self.index_of[m.item]
        return m

    # ----------------------------------------------------------------- moving

    def visible(self) -> list[int]:
        if self.filter == "all":
            return list(range(len(self.items)))
        state = self.state()
        out = []
        for i, r in enumerate(self.items):
            mine = state.get((self.annotator, r["id"]))
            if self.filter == "unassessed" and mine is None:
                out.append(i)
            elif self.filter in ("hallucinated", "unsure") and mine is not None and mine.label == self.filter:
                out.append(i)
            elif self.filter == "flagged" and (r.get("flags") or {}).get("count", 0) > 0:
                out.append(i)
            elif self.filter == "disagreements":
                labels = {m.label for (a, it), m in state.items() if it == r["id"]
                          and m.label in ("hallucinated", "faithful")}
                if len(labels) > 1:
                    out.append(i)
        return out

    def move(self, delta: int) -> None:
        vis = self.visible()
        if not vis:
            return
        if self.pos in vis:
            k = vis.index(self.pos) + delta
        else:  # the current item left the filter: go to the nearest visible one
            later = [v for v in vis if v > self.pos]
            k = vis.index(later[0]) if later and delta > 0 else (len(vis) - 1 if delta < 0 else 0)
        self.pos = vis[max(0, min(len(vis) - 1, k))]

    def next_unassessed(self) -> bool:
        state = self.state()
        n = len(self.items)
        for step in range(1, n + 1):
            i = (self.pos + step) % n
            if (self.annotator, self.items[i]["id"]) not in state:
                self.pos = i
                return True
        return False

    def search(self, text: str) -> bool:
        text = text.lower()
        n = len(self.items)
        for step in range(1, n + 1):
            i = (self.pos + step) % n
            r = self.items[i]
            hay = " ".join(str(r.get(k) or "") for k in ("id", "question", "reference", "answer", "context")).lower()
            if text in hay:
                self.pos = i
                return True
        return False

    def goto(self, number: int) -> bool:
        if 1 <= number <= len(self.items):
            self.pos = number - 1
            return True
        return False

    def cycle_filter(self) -> str:
        self.filter = FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)]
        vis = self.visible()
        if vis and self.pos not in vis:
            self.pos = vis[0]
        return self.filter

    def close(self) -> None:
        if self.log:
            self.log.close()
