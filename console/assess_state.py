"""The assessment screen's model: items, this annotator's marks, position, filters (no Textual here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.assessment import ASSESSMENTS, CATEGORIES, JUDGED, AssessmentLog, Mark, current, read_marks
from engine.errors import SessionLockedError
from engine.judges import is_automatic
from engine.session.records import read_results
from engine.stats import items_for_half_width, wilson_interval

FILTERS = ("all", "unassessed", "hallucinated", "unsure", "flagged", "disagreements", "abstained",
           "judge: hallucinated", "judge: faithful", "judge: abstained", "judge: unsure", "judges disagree")
ORDERS = ("as listed", "most doubtful first")


def judges_disagree(judgements: list[Mark]) -> bool:
    """Some judge says hallucinated and another does not (faithful and abstained agree: neither
    calls the answer a hallucination)."""
    return len({m.label == "hallucinated" for m in judgements if m.label in JUDGED}) > 1


def doubt(judgements: list[Mark]) -> float:
    """How doubtful the automatic judges leave an item, in [0, 1]: 1 when they disagree,
    else the closest any judge's score comes to 0.5 (1 at 0.5, 0 at 0 or 1); an 'unsure'
    verdict counts as 0.5, and no judgement at all as -1 (last)."""
    if not judgements:
        return -1.0
    if judges_disagree(judgements):
        return 1.0
    out = 0.0
    for m in judgements:
        if m.label == "unsure":
            out = max(out, 1.0 if m.score is None else 1 - abs(2 * m.score - 1))
        elif m.score is not None:
            out = max(out, 1 - abs(2 * m.score - 1))
    return out


@dataclass
class Draft:
    """Categories, severity and note chosen before the item has a label."""

    categories: list[str] = field(default_factory=list)
    severity: str | None = None
    note: str = ""


class AssessModel:
    def __init__(self, session: Path, annotator: str, blind: bool = False, read_only: str | None = None):
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
        self.log: AssessmentLog | None = None
        if read_only:  # a console that only watches takes no annotator's lock
            self.readonly_reason = f"read-only: {read_only}"
            self.marks, self.problems = read_marks(self.session / ASSESSMENTS)
        else:
            try:
                self.log = AssessmentLog(self.session, annotator)
                self.marks, self.problems = self.log.marks, self.log.problems
            except SessionLockedError as e:
                self.readonly_reason = f"read-only: {e.message}"
                self.marks, self.problems = read_marks(self.session / ASSESSMENTS)
        self.filter = "all"
        self.order = ORDERS[0]
        self.drafts: dict[str, Draft] = {}
        self.pos = self.first_unassessed()

    # ----------------------------------------------------------------- state

    def state(self) -> dict[tuple[str, str], Mark]:
        return current(self.marks)

    def mine(self, item_id: str) -> Mark | None:
        return self.state().get((self.annotator, item_id))

    def others(self, item_id: str) -> list[Mark]:
        """Other people's marks on the item (hidden when blind)."""
        if self.blind:
            return []
        return [m for (a, i), m in self.state().items() if i == item_id and a != self.annotator
                and not is_automatic(a)]

    def judgements(self, item_id: str) -> list[Mark]:
        """The automatic judges' verdicts on the item (annotators ``auto:NAME``; hidden when blind)."""
        if self.blind:
            return []
        return [m for (a, i), m in self.state().items() if i == item_id and is_automatic(a)]

    def _judgements_by_item(self, state: dict) -> dict[str, list[Mark]]:
        out: dict[str, list[Mark]] = {}
        if not self.blind:
            for (a, i), m in state.items():
                if is_automatic(a):
                    out.setdefault(i, []).append(m)
        return out

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
        n = sum(m.label in JUDGED for m in mine)
        lo, hi = wilson_interval(k, n)
        need = items_for_half_width(k / n if n else 0.5, 0.10)
        left = len(self.items) - len(mine)
        return {"assessed": len(mine), "total": len(self.items), "hallucinated": k, "judged": n,
                "rate": k / n if n else None, "lo": lo, "hi": hi, "more": min(max(0, need - n), left),
                "short": max(0, need - n - left), "unsure": sum(m.label == "unsure" for m in mine),
                "abstained": sum(m.label == "abstained" for m in mine)}

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
        """The items the filter keeps, in the chosen order."""
        if self.filter == "all" and self.order == ORDERS[0]:
            return list(range(len(self.items)))
        state = self.state()
        judged = self._judgements_by_item(state)
        out = self._filtered(state, judged)
        if self.order == "most doubtful first":
            rank = {i: doubt(judged.get(self.items[i]["id"], [])) for i in out}
            out.sort(key=lambda i: -rank[i])  # stable: ties keep the listed order
        return out

    def _filtered(self, state: dict, judged: dict[str, list[Mark]]) -> list[int]:
        if self.filter == "all":
            return list(range(len(self.items)))
        out = []
        for i, r in enumerate(self.items):
            mine = state.get((self.annotator, r["id"]))
            verdicts = {m.label for m in judged.get(r["id"], [])}
            if self.filter == "unassessed" and mine is None:
                out.append(i)
            elif self.filter in ("hallucinated", "abstained", "unsure") and mine is not None \
                    and mine.label == self.filter:
                out.append(i)
            elif self.filter.startswith("judge: ") and self.filter[len("judge: "):] in verdicts:
                out.append(i)
            elif self.filter == "judges disagree" and judges_disagree(judged.get(r["id"], [])):
                out.append(i)
            elif self.filter == "flagged" and (r.get("flags") or {}).get("count", 0) > 0:
                out.append(i)
            elif self.filter == "disagreements":
                labels = {m.label for (a, it), m in state.items() if it == r["id"] and m.label in JUDGED}
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

    def cycle_order(self) -> str:
        self.order = ORDERS[(ORDERS.index(self.order) + 1) % len(ORDERS)]
        vis = self.visible()
        if vis:
            self.pos = vis[0]
        return self.order

    def cycle_filter(self) -> str:
        self.filter = FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)]
        vis = self.visible()
        if vis and self.pos not in vis:
            self.pos = vis[0]
        return self.filter

    def close(self) -> None:
        if self.log:
            self.log.close()
