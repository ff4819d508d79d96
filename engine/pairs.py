"""Preference datasets at scale: DPO triplets from a dataset's columns, from labelled
statements, or from the model's own samples.

Every mode reads its source as a stream (JSONL, CSV, TSV; a JSON array up to 256 MiB) and
goes in two passes, so that memory does not grow with the file:

1. each source row becomes a small *candidate* (its group key, texts, line and id) or a
   problem reported by line and field; rows whose question is held out (``--exclude``) are
   dropped here. Candidates are spilled to bucket files on disk by a hash of their group
   (one bucket, in memory, for a file under 16 MiB); each group's seeded 64-bit hash is kept
   (8 bytes a row) to split by group exactly: the ``--val-fraction`` of groups with the
   smallest hashes go to validation, and never a group to both files.
2. each bucket is read back, its groups turned into pairs (a group is whole in one
   bucket), pairs checked (empty, identical, duplicate, too long) and written to
   ``train_dpo.jsonl`` or ``val_dpo.jsonl``; ``pairs_sources.jsonl`` says which source
   rows each pair came from, and ``pairs_report.json``/``.md`` count everything.

A ``pairs`` session records the run (progress events, the report, and the fingerprints
of the questions used, so that ``rounds compare`` warns when they are later tested on).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.data import DataReport, data_size, detect_format, is_saved_dataset, prompt_text, read_records
from engine.errors import UserError
from engine.session import SessionWriter, file_mode, read_session_json, write_json_atomic
from engine.session.layout import (
    ERROR,
    EVENT,
    FINISHED,
    PAIRS_REPORT_JSON,
    PAIRS_REPORT_MD,
    PROGRESS,
    SESSION_JSON,
    USED_FOR_PAIRS,
)
from engine.text import fingerprint
from engine.text import normalise as _norm

TRAIN_FILE = "train_dpo.jsonl"
VAL_FILE = "val_dpo.jsonl"
KTO_TRAIN_FILE = "train_kto.jsonl"  # --kto: unpaired examples (prompt, completion, label) instead of pairs
KTO_VAL_FILE = "val_kto.jsonl"
SOURCES_FILE = "pairs_sources.jsonl"
REPORT_JSON, REPORT_MD = PAIRS_REPORT_JSON, PAIRS_REPORT_MD
BUCKET_BYTES = 16 * 2**20  # a source under this is paired in memory; a bigger one in buckets of about this
FACTUAL = {"1", "true", "t", "yes", "y", "factual", "faithful", "correct", "supported", "fact", "real", "valid"}
NOT_FACTUAL = {"0", "false", "f", "no", "n", "not factual", "non-factual", "nonfactual", "non factual",
               "hallucinated", "hallucination", "incorrect", "unsupported", "fake", "invalid", "not_factual"}


DEFAULT_VAL_FRACTION = 0.1  # every source: that share of the questions (groups) is held back for validation


@dataclass
class PairOptions:
    out: str
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0
    exclude: list[str] = field(default_factory=list)
    max_length: int | None = None
    tokenizer: str | None = None
    max_pairs_per_group: int = 4


def _h64(text: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest(), "big")


# --------------------------------------------------------------------------- held-out questions

@dataclass
class HeldOut:
    ids: set[str] = field(default_factory=set)
    texts: set[int] = field(default_factory=set)
    sources: list[dict] = field(default_factory=list)

    def reason(self, item_id: Any, key: str, *texts: str | None) -> str | None:
        """Why a candidate is held out: its id, or its normalised question (``key``) or other texts."""
        if item_id not in (None, "") and str(item_id) in self.ids:
            return "held out (same id)"
        if not self.texts:
            return None
        if _h64(key) in self.texts or any(t and _h64(_norm(t)) in self.texts for t in texts):
            return "held out (same question text)"
        return None


def read_held_out(paths: list[str]) -> HeldOut:
    """Ids and normalised question texts of evaluation sessions or test files."""
    held = HeldOut()
    for p in paths:
        path = Path(p)
        before = (len(held.ids), len(held.texts))
        if path.is_dir() and (path / SESSION_JSON).exists():
            from engine.evaluate import EvalSpec, item_rows
            from engine.session.records import read_results

            meta = read_session_json(path)
            if meta.get("kind") != "eval":
                raise UserError(f"{path.name} is a {meta.get('kind')} session, not an evaluation", field="--exclude",
                                hint="exclude evaluation sessions or test files")
            rows = read_results(path)  # [] before any answer
            data = (meta.get("config") or {}).get("data")
            if data and Path(data).is_file():
                try:
                    rows += item_rows(EvalSpec.from_json(meta["config"]))
                except UserError:
                    pass  # the results alone still name the questions
            for r in rows:
                qid = (r.get("extra") or {}).get("question_id", r.get("id"))
                if qid not in (None, ""):
                    held.ids.add(str(qid))
                if r.get("question"):
                    held.texts.add(_h64(_norm(r["question"])))
        elif path.is_file():
            report = DataReport(file=str(path), kind="exclude")
            for _, rec in read_records(path, detect_format(path), report):
                if not isinstance(rec, dict) or "__header__" in rec:
                    continue
                if rec.get("id") not in (None, ""):
                    held.ids.add(str(rec["id"]))
                for key in ("question", "prompt"):
                    if isinstance(rec.get(key), str) and rec[key].strip():
                        held.texts.add(_h64(_norm(rec[key])))
        else:
            raise UserError(f"{p}: neither an evaluation session nor a file", field="--exclude",
                            hint="give a session folder (sessions/ID) or a test file")
        held.sources.append({"source": str(path), "ids": len(held.ids) - before[0],
                             "questions": len(held.texts) - before[1]})
    return held


# --------------------------------------------------------------------------- progress

class Progress:
    """A bar on the terminal (when stderr is one) and ``progress`` events in the session."""

    def __init__(self, writer: SessionWriter | None, total: int, unit: str, quiet: bool = False,
                 label: str = "reading"):
        self.writer, self.total, self.unit, self.label = writer, max(total, 1), unit, label
        self.tty = sys.stderr.isatty() and not quiet
        self.t0 = time.monotonic()
        self.last_bar = self.last_event = 0.0
        self.rows = 0

    def update(self, done: int, rows: int, force: bool = False) -> None:
        now = time.monotonic()
        self.rows = rows
        elapsed = max(now - self.t0, 1e-9)
        frac = min(1.0, done / self.total)
        eta = elapsed * (1 - frac) / frac if frac > 0 else None
        if self.tty and (force or now - self.last_bar >= 0.2):
            self.last_bar = now
            width = 30
            filled = int(width * frac)
            sys.stderr.write(f"\r  {self.label:8} [{'#' * filled}{'.' * (width - filled)}] {100 * frac:5.1f}%  "
                             f"{rows:,} rows  {rows / elapsed:,.0f} rows/s"
                             + (f"  ETA {eta:,.0f} s " if eta is not None and frac < 1 else "          "))
            sys.stderr.flush()
        if self.writer and (force or now - self.last_event >= 2.0):
            self.last_event = now
            scale = 2**20 if self.unit == "MiB" else 1
            steps = max(1, math.ceil(self.total / scale))
            self.writer.event(PROGRESS, step=steps if done >= self.total else int(done / scale), max_steps=steps,
                              unit=self.unit, phase=self.label, items_per_second=round(rows / elapsed, 1),
                              eta_seconds=round(eta, 1) if eta is not None else None, rows=rows)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------- the two passes

@dataclass
class Candidate:
    """One unit of a group: a ready pair (columns, samples) or a labelled statement."""

    key: str  # the group: normalised question / group value
    line: int
    id: str | None
    data: dict


class Buckets:
    """Candidates spilled to disk by group hash; a group is whole in one bucket."""

    def __init__(self, n: int, folder: Path):
        self.n = n
        self.dir = None if n == 1 else Path(tempfile.mkdtemp(prefix=".pairs-", dir=folder))
        self.memory: list[dict] = []
        self.files = [open(self.dir / f"{i}.jsonl", "w", encoding="utf-8") for i in range(n)] if self.dir else []

    def add(self, c: Candidate) -> None:
        rec = {"k": c.key, "l": c.line, "i": c.id, "d": c.data}
        if self.dir is None:
            self.memory.append(rec)
        else:
            self.files[_h64(c.key, "bucket") % self.n].write(json.dumps(rec, ensure_ascii=False) + "\n")

    def groups(self, on_bucket: Callable[[], None] = lambda: None) -> Iterator[list[dict]]:
        """Each bucket's groups in first-seen order, one bucket in memory at a time."""
        for f in self.files:
            f.close()
        sources = [self.memory] if self.dir is None else [self.dir / f"{i}.jsonl" for i in range(self.n)]
        for src in sources:
            on_bucket()
            if isinstance(src, list):
                recs = src
            else:
                with open(src, encoding="utf-8") as f:
                    recs = [json.loads(line) for line in f]
            by_key: dict[str, list[dict]] = defaultdict(list)
            for r in recs:
                by_key[r["k"]].append(r)
            del recs
            yield from by_key.values()

    def cleanup(self) -> None:
        for f in self.files:
            f.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class LengthCheck:
    """Token length of prompt + the longer answer with the tokenizer's chat template."""

    def __init__(self, tokenizer_path: str | None, max_length: int | None, tokenizer: Any = None):
        self.max_length = max_length
        self.tok = tokenizer
        if max_length and self.tok is None:
            if not tokenizer_path:
                raise UserError("--max-length needs a tokenizer to count tokens", field="--max-length",
                                hint="add --tokenizer MODEL_FOLDER (the model you will train)")
            from engine.data import load_tokenizer_folder

            self.tok = load_tokenizer_folder(tokenizer_path, field="--tokenizer")

    def too_long(self, prompt: str, chosen: str, rejected: str) -> int | None:
        if not self.max_length:
            return None
        answer = chosen if len(chosen) >= len(rejected) else rejected
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        try:
            text = self.tok.apply_chat_template(msgs, tokenize=False)
        except Exception:  # no chat template: plain text
            text = f"{prompt}\n{answer}"
        n = len(self.tok(text, add_special_tokens=False)["input_ids"])
        return n if n > self.max_length else None


def _ranges(lines: Iterator[int], limit: int = 200) -> str:
    """ascending 1,2,3,7,8 -> '1-3,7-8' (at most ``limit`` ranges, then a count)."""
    out, start, prev = [], None, None
    for n in lines:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    if len(out) > limit:
        return ",".join(out[:limit]) + f",... ({len(out) - limit} more ranges; every pair's rows: {SOURCES_FILE})"
    return ",".join(out)


def _percentiles(values: array) -> dict:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))], 3)

    bins = {"< 0.5": 0, "0.5-0.8": 0, "0.8-1.25": 0, "1.25-2": 0, ">= 2": 0}
    for x in v:
        bins["< 0.5" if x < 0.5 else "0.5-0.8" if x < 0.8 else "0.8-1.25" if x < 1.25 else
             "1.25-2" if x < 2 else ">= 2"] += 1
    return {"mean": round(sum(v) / len(v), 3), "min": round(v[0], 3), "p5": q(0.05), "p25": q(0.25),
            "median": q(0.5), "p75": q(0.75), "p95": q(0.95), "max": round(v[-1], 3), "histogram": bins}


class PairSink:
    """Writes checked pairs to the train/val files and counts everything for the report."""

    def __init__(self, out: Path, val_below: int, seed: int, lengths: LengthCheck, kto: bool = False):
        self.out = out
        self.val_below, self.seed, self.lengths, self.kto = val_below, seed, lengths, kto
        # written under temporary names and renamed at the end: a run stopped half-way leaves the
        # previous files in --out as they were
        self.names = {"train": KTO_TRAIN_FILE if kto else TRAIN_FILE, "val": KTO_VAL_FILE if kto else VAL_FILE,
                      "sources": SOURCES_FILE}
        self.files = {split: open(out / f".{name}.partial", "w", encoding="utf-8")
                      for split, name in self.names.items()}
        self.sources = self.files.pop("sources")
        self.counts: Counter = Counter()
        self.groups: Counter = Counter()
        self.dropped: Counter = Counter()
        self.ratios = array("f")
        self.lines_used = bytearray()  # a bit per source line
        self.lines_count = 0
        self.fingerprints = tempfile.TemporaryFile("w+", encoding="utf-8")  # one per question, streamed out later
        self._seen: set[int] = set()
        self._bucket_fps: set[str] = set()

    def new_bucket(self) -> None:
        """Duplicates share a prompt, hence a group, hence a bucket: what was seen before can go."""
        self._seen.clear()
        self._bucket_fps.clear()

    def split_of(self, key: str) -> str:
        return "val" if _h64(key, f"split{self.seed}") < self.val_below else "train"

    def _use_line(self, n: int) -> None:
        byte, bit = divmod(n, 8)
        if byte >= len(self.lines_used):
            self.lines_used.extend(bytes(byte + 1 - len(self.lines_used) + 4096))
        if not self.lines_used[byte] >> bit & 1:
            self.lines_used[byte] |= 1 << bit
            self.lines_count += 1

    def used_ranges(self, limit: int = 200) -> str:
        return _ranges((i * 8 + b for i, v in enumerate(self.lines_used) if v for b in range(8) if v >> b & 1), limit)

    def add(self, key: str, question: str, prompt: str, chosen: str, rejected: str, lines: list[int],
            ids: list[str | None], kind: str | None = None) -> bool:
        if not (chosen or "").strip() or not (rejected or "").strip():
            self.dropped["empty chosen or rejected"] += 1
            return False
        nc, nr = _norm(chosen), _norm(rejected)
        if nc == nr:
            self.dropped["chosen identical to rejected"] += 1
            return False
        sig = _h64("\0".join((key, _norm(prompt), nc, nr)))
        if sig in self._seen:  # duplicates share a prompt, hence a group, hence a bucket
            self.dropped["duplicate pair"] += 1
            return False
        n = self.lengths.too_long(prompt, chosen, rejected)
        if n:
            self.dropped[f"too long for --max-length {self.lengths.max_length}"] += 1
            return False
        self._seen.add(sig)
        self._write(key, question, {"prompt": prompt, "chosen": chosen, "rejected": rejected}, lines, ids, kind)
        self.ratios.append(len(chosen.split()) / max(1, len(rejected.split())))
        return True

    def add_example(self, key: str, question: str, prompt: str, completion: str, label: bool, lines: list[int],
                    ids: list[str | None], kind: str | None = None) -> bool:
        """One unpaired KTO example: an answer, desirable (``label``) or not."""
        if not (completion or "").strip():
            self.dropped["empty answer"] += 1
            return False
        sig = _h64("\0".join((key, _norm(prompt), _norm(completion))))
        if sig in self._seen:
            self.dropped["duplicate example"] += 1
            return False
        if self.lengths.too_long(prompt, completion, ""):
            self.dropped[f"too long for --max-length {self.lengths.max_length}"] += 1
            return False
        self._seen.add(sig)
        self._write(key, question, {"prompt": prompt, "completion": completion, "label": bool(label)}, lines, ids,
                    kind)
        self.counts["desirable" if label else "undesirable"] += 1
        return True

    def _write(self, key: str, question: str, row: dict, lines: list[int], ids: list[str | None],
               kind: str | None) -> None:
        split = self.split_of(key)
        self.files[split].write(json.dumps(row, ensure_ascii=False) + "\n")
        self.sources.write(json.dumps({"split": split, "pair": self.counts[split] + 1, "lines": lines,
                                       "ids": [i for i in ids if i not in (None, "")],
                                       **({"kind": kind} if kind else {})}, ensure_ascii=False) + "\n")
        self.counts[split] += 1
        if kind:
            self.counts[kind] += 1
        for n in lines:
            self._use_line(n)
        if key not in self._bucket_fps:  # one fingerprint a question
            self._bucket_fps.add(key)
            self.fingerprints.write(fingerprint(question) + "\n")

    def end_group(self, key: str, wrote: bool) -> None:
        if wrote:
            self.groups[self.split_of(key)] += 1

    def close(self, commit: bool) -> None:
        self.fingerprints.flush()
        for f in (*self.files.values(), self.sources):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for name in self.names.values():
            tmp = self.out / f".{name}.partial"
            if commit:
                os.replace(tmp, self.out / name)
            else:
                tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the modes

@dataclass
class Mode:
    """How one source turns into candidates, and groups into pairs."""

    name: str
    source: str
    settings: dict
    extract: Callable[[int, dict, DataReport], Candidate | None]
    pairs: Callable[[list[dict], PairSink, Counter], bool]
    required: tuple[str, ...] = ()
    kto: bool = False  # writes unpaired KTO examples (PairSink.add_example) instead of DPO pairs
    temporary_source: bool = False  # made by the mode (marks): removed when the run ends
    describe: str | None = None  # the source for people, when it is not simply the file


def _text(rec: dict, col: str, line: int, report: DataReport, required: bool = True) -> str | None:
    if col not in rec or rec[col] is None:
        if required:
            report.add(f"missing field {col!r}; the fields are: {', '.join(rec) or '(none)'}", line=line, field=col,
                       hint="check the column flags")
        return None
    value = rec[col]
    if isinstance(value, (int, float, bool)):
        value = str(value)
    if not isinstance(value, str):
        report.add(f"must be text, got {type(value).__name__}", line=line, field=col)
        return None
    return value


def columns_mode(file: str, prompt: str, chosen: str, rejected: str, context: str | None = None,
                 id_col: str | None = None) -> Mode:
    """A row that already holds a question, a correct and a hallucinated answer (MedHallu's layout)."""

    def extract(line: int, rec: dict, report: DataReport) -> Candidate | None:
        q = _text(rec, prompt, line, report)
        c = _text(rec, chosen, line, report)
        r = _text(rec, rejected, line, report)
        ctx = _text(rec, context, line, report) if context else None
        if q is None or c is None or r is None or (context and ctx is None):
            return None
        if not q.strip():
            report.add("is empty", line=line, field=prompt, hint="every pair needs a question")
            return None
        rid = rec.get(id_col or "id")
        return Candidate(_norm(q), line, None if rid in (None, "") else str(rid),
                         {"question": q, "context": ctx, "chosen": c, "rejected": r})

    def pairs(group: list[dict], sink: PairSink, dropped: Counter) -> bool:
        wrote = False
        for g in group:
            d = g["d"]
            p = prompt_text({"question": d["question"], "context": d.get("context")})
            wrote |= sink.add(g["k"], d["question"], p, d["chosen"], d["rejected"], [g["l"]], [g["i"]])
        return wrote

    return Mode("columns", file, {"prompt": prompt, "chosen": chosen, "rejected": rejected, "context": context,
                                  "id": id_col}, extract, pairs, tuple(c for c in (prompt, chosen, rejected, context)
                                                                       if c))


def _template_fields(template: str) -> list[str]:
    import string

    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def labels_mode(file: str, group: str, text: str, label: str, template: str | None = None,
                factual: list[str] | None = None, not_factual: list[str] | None = None,
                max_per_group: int = 4, seed: int = 0) -> Mode:
    """Statements labelled factual / not factual sharing a group (MedHal's layout): pair a factual
    with a non-factual statement of the same group; the prompt is the template over the group's row."""
    # a template typed on a command line carries \\n and \\t as two characters: they mean a new line / tab
    template = (template or "{" + group + "}").replace("\\n", "\n").replace("\\t", "\t")
    try:
        fields = _template_fields(template)
    except ValueError as e:
        raise UserError(f"the prompt template is not valid: {e}", field="--prompt-template",
                        hint='fields are column names in braces, e.g. "Context: {context}\\n\\nState one fact."') \
            from None
    yes = FACTUAL | {v.lower() for v in factual or []}
    no = (NOT_FACTUAL - {v.lower() for v in factual or []}) | {v.lower() for v in not_factual or []}

    def extract(line: int, rec: dict, report: DataReport) -> Candidate | None:
        g = _text(rec, group, line, report)
        t = _text(rec, text, line, report)
        lab = rec.get(label)
        if label not in rec:
            report.add(f"missing field {label!r}; the fields are: {', '.join(rec) or '(none)'}", line=line,
                       field=label, hint="check --label")
            return None
        if g is None or t is None:
            return None
        value = str(lab).strip().lower()
        if value in yes:
            is_fact = True
        elif value in no:
            is_fact = False
        else:
            report.add(f"label {lab!r} is neither factual nor not factual", line=line, field=label,
                       hint="name its meaning: --factual VALUE or --not-factual VALUE")
            return None
        missing = [f for f in fields if f not in rec]
        if missing:
            report.add(f"the prompt template uses {', '.join(repr(f) for f in missing)}, which this row lacks; "
                       f"the fields are: {', '.join(rec)}", line=line, field=missing[0],
                       hint="change --prompt-template")
            return None
        prompt = template.format_map({f: rec[f] for f in fields})
        rid = rec.get("id")
        return Candidate(_norm(g), line, None if rid in (None, "") else str(rid),
                         {"prompt": prompt, "text": t, "factual": is_fact})

    def pairs(group_rows: list[dict], sink: PairSink, dropped: Counter) -> bool:
        import random

        facts = [g for g in group_rows if g["d"]["factual"]]
        wrong = [g for g in group_rows if not g["d"]["factual"]]
        if not facts or not wrong:
            dropped["groups without a factual statement" if not facts else
                    "groups without a non-factual statement"] += 1
            return False
        rng = random.Random(_h64(group_rows[0]["k"], f"pairs{seed}"))
        rng.shuffle(facts)
        rng.shuffle(wrong)
        prompt = group_rows[0]["d"]["prompt"]
        wrote = False
        for i in range(min(max(len(facts), len(wrong)), max_per_group)):
            f, w = facts[i % len(facts)], wrong[i % len(wrong)]
            wrote |= sink.add(group_rows[0]["k"], prompt, prompt, f["d"]["text"], w["d"]["text"],
                              sorted({f["l"], w["l"]}), [f["i"], w["i"]])
        if max(len(facts), len(wrong)) > max_per_group:
            dropped[f"statements beyond --max-pairs-per-group {max_per_group}"] += \
                max(len(facts), len(wrong)) - max_per_group
        return wrote

    return Mode("labels", file, {"group": group, "text": text, "label": label, "prompt_template": template,
                                 "factual": sorted(yes), "not_factual": sorted(no),
                                 "max_pairs_per_group": max_per_group}, extract, pairs, (group, text, label))


def samples_mode(session: Path, rule: str = "contains", annotator: str | None = None,
                 max_per_group: int = 4, judge_options: dict | None = None) -> Mode:
    """The model's own answers (an eval session, usually sampled: items ``QID~1..N``) judged against
    the reference by a rule or by the session's marks; a faithful answer is paired with a
    hallucinated one of the same question, and the reference is chosen when no answer is faithful."""
    from engine.evaluate import eval_session
    from engine.session.layout import RESULTS

    meta = eval_session(session)
    if not (session / RESULTS).exists():
        raise UserError(f"{session.name} has no answers yet", hint=f"continue it: rounds eval --resume {session.name}")
    marks: dict[str, str] = {}
    if rule == "marks":
        from engine.report import item_labels

        marks, _, _ = item_labels(session, annotator)
        if not marks:
            raise UserError(f"{session.name} has no marks yet",
                            hint=f"assess its answers (rounds assess {session.name}), then run this again "
                                 f"with --resume {session.name} --judge marks")
    else:
        from engine import judges

        judge = judges.get(rule, **(judge_options or {}))
        if judge.needs_samples:
            raise UserError(f"the {rule!r} judge needs each answer's own sampled alternatives, which a samples "
                            "session does not keep", field="--judge",
                            hint="use a judge that needs no samples here ("
                                 + ", ".join(n for n in judges.names() if not judges.get_class(n).needs_samples)
                                 + "); or judge the session's answers first (rounds assess --auto ...) and pair "
                                   "with --judge marks")

    def extract(line: int, rec: dict, report: DataReport) -> Candidate | None:
        if not all(isinstance(rec.get(k), str) for k in ("id", "question", "reference")):
            report.add("not a result record (id, question, reference, answer)", line=line)
            return None
        label = marks.get(rec["id"]) if rule == "marks" else judge.judge_many([rec])[0].label
        qid = str((rec.get("extra") or {}).get("question_id", rec["id"]))
        return Candidate(_norm(rec["question"]), line, qid,
                         {"question": rec["question"], "context": rec.get("context"), "reference": rec["reference"],
                          "answer": rec.get("answer") or "", "label": label, "item": rec["id"]})

    def pairs(group: list[dict], sink: PairSink, dropped: Counter) -> bool:
        faithful, wrong, seen = [], [], set()
        for g in group:
            d = g["d"]
            if d["label"] == "abstained":
                dropped["answers that abstain where the reference states a fact"] += 1
                continue
            if d["label"] not in ("faithful", "hallucinated"):
                dropped["answers not judged (unsure or no mark)"] += 1
                continue
            sig = (_norm(d["answer"]), d["label"])
            if sig in seen:
                dropped["repeated answers"] += 1
                continue
            seen.add(sig)
            (faithful if d["label"] == "faithful" else wrong).append(g)
        if not wrong:
            if faithful:
                dropped["questions with no hallucinated answer"] += 1
            return False
        d0 = group[0]["d"]
        prompt = prompt_text({"question": d0["question"], "context": d0.get("context")})
        wrote = False
        for i, w in enumerate(wrong[:max_per_group]):
            if faithful:
                c = faithful[i % len(faithful)]
                chosen, lines, ids, kind = c["d"]["answer"], [c["l"], w["l"]], [c["d"]["item"], w["d"]["item"]], \
                    "sample as chosen"
            else:
                chosen, lines, ids, kind = d0["reference"], [w["l"]], [w["d"]["item"]], "reference as chosen"
            wrote |= sink.add(group[0]["k"], d0["question"], prompt, chosen, w["d"]["answer"], sorted(lines), ids,
                              kind)
        if len(wrong) > max_per_group:
            dropped[f"hallucinated answers beyond --max-pairs-per-group {max_per_group}"] += \
                len(wrong) - max_per_group
        return wrote

    return Mode("samples", str(session / RESULTS), {"session": session.name, "judge": rule, "annotator": annotator,
                                                    "model": (meta.get("config") or {}).get("model"),
                                                    "adapter": (meta.get("config") or {}).get("adapter"),
                                                    "samples": (meta.get("config") or {}).get("samples", 1),
                                                    "temperature": (meta.get("config") or {}).get("temperature"),
                                                    "max_pairs_per_group": max_per_group}, extract, pairs)


def _fill(template: str, fields: dict) -> str:
    try:
        return template.format_map(fields or {})
    except (KeyError, IndexError, ValueError):
        return template


def marks_mode(sessions: list[Path], annotator: str | None = None, allow_test_items: bool = False,
               refusal: str | None = None, kto: bool = False, with_reference: bool = True) -> Mode:
    """Answers judged by hand or by `assess --auto`, in one or more eval sessions, by one annotator
    or by the consensus (people first, judges where no person judged). A held-out test session is
    refused. The judged items are written to a temporary JSONL that the run streams like any
    source, one line an item (pairs_sources.jsonl names each pair's items as SESSION/ITEM).

    DPO pairs: an answer judged hallucinated, or abstaining where the reference states a fact, loses
    to the reference ("reference as chosen", "over-refusal"); with ``refusal`` (``{field}`` takes
    the item's extra fields) an answer judged faithful wins over that refusal ("keep answering"),
    so that DPO keeps answering what the model knows.

    KTO examples (``kto``): an answer judged faithful is desirable, one judged hallucinated or
    over-refusing undesirable, and (``with_reference``) the reference of such an answer a desirable
    example beside it. No pairing: the two sides need not share a question."""
    from engine.evaluate import eval_session
    from engine.report import item_labels

    if not sessions:
        raise UserError("no sessions given", hint="rounds pairs SESSION [SESSION ...] --out DIR")
    fd, tmp = tempfile.mkstemp(prefix=".rounds-marks-", suffix=".jsonl")
    whose, judged = [], 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for session in sessions:
                meta = eval_session(session)
                if meta.get("held_out") and not allow_test_items:
                    raise UserError(f"{session.name} is a held-out test set: pairs from it would leak the test into "
                                    "training", hint="use a separate assessment set, or pass --allow-test-items if "
                                                     "you mean it")
                labels, items, who = item_labels(session, annotator)
                whose.append(f"{session.name}: {who}")
                judged += len(labels)
                for item_id, label in sorted(labels.items()):
                    r = items[item_id]
                    f.write(json.dumps({"id": f"{session.name}/{item_id}", "question": r["question"],
                                        "context": r.get("context"), "reference": r.get("reference") or "",
                                        "answer": r.get("answer") or "", "label": label,
                                        "extra": r.get("extra") or {}}, ensure_ascii=False) + "\n")
    except BaseException:  # the answers' text must not stay behind in the temporary folder
        os.unlink(tmp)
        raise
    if not judged:
        os.unlink(tmp)
        raise UserError(f"no judged answers in {', '.join(Path(x).name for x in sessions)}"
                        + (f" by {annotator}" if annotator else ""),
                        hint="assess them first: rounds assess SESSION (by hand), or --auto JUDGE")

    def extract(line: int, rec: dict, report: DataReport) -> Candidate | None:
        # no id for --exclude: another set's ids mean nothing here; its question texts do
        return Candidate(_norm(rec["question"]), line, None, rec)

    def dpo_item(sink: PairSink, d: dict, key: str, prompt: str, lines: list[int], ids: list) -> bool:
        if d["label"] == "faithful":
            return bool(refusal) and sink.add(key, d["question"], prompt, d["answer"], _fill(refusal, d["extra"]),
                                              lines, ids, "keep answering")
        return sink.add(key, d["question"], prompt, d["reference"], d["answer"], lines, ids,
                        "over-refusal" if d["label"] == "abstained" else "reference as chosen")

    def kto_item(sink: PairSink, d: dict, key: str, prompt: str, lines: list[int], ids: list) -> bool:
        if d["label"] == "faithful":
            return sink.add_example(key, d["question"], prompt, d["answer"], True, lines, ids,
                                    "desirable: answers judged faithful")
        wrote = sink.add_example(key, d["question"], prompt, d["answer"], False, lines, ids,
                                 f"undesirable: answers judged {d['label']}")
        if with_reference and d["reference"].strip() and _norm(d["reference"]) != _norm(d["answer"]):
            wrote |= sink.add_example(key, d["question"], prompt, d["reference"], True, lines, ids,
                                      "desirable: references of those answers")
        return wrote

    item = kto_item if kto else dpo_item

    def pairs(group: list[dict], sink: PairSink, dropped: Counter) -> bool:
        wrote = False
        for g in group:  # faithful, hallucinated, or abstaining where the reference states a fact
            if g["d"]["label"] in ("faithful", "hallucinated", "abstained"):
                wrote |= item(sink, g["d"], g["k"], prompt_text(g["d"]), [g["l"]], [g["d"]["id"]])
        return wrote

    settings = {"sessions": [str(x) for x in sessions], "annotator": annotator or "consensus", "marks_by": whose,
                "format": "kto" if kto else "dpo", **({"refusal": refusal} if refusal and not kto else {}),
                **({"with_reference": with_reference} if kto else {})}
    return Mode("marks", tmp, settings, extract, pairs, kto=kto,
                temporary_source=True, describe="marks of " + ", ".join(Path(x).name for x in sessions))


def make_pairs(sessions: list[Path], out: Path, val_fraction: float = DEFAULT_VAL_FRACTION,
               annotator: str | None = None, allow_test_items: bool = False, seed: int = 0,
               refusal: str | None = None, exclude: list[str] | None = None, root: Path | None = None,
               name: str | None = None, **build_kw) -> dict:
    """DPO pairs from marked sessions (``marks_mode``) into the folder ``out``, as a pairs session
    in ``root`` (default: the sessions' own root), like every other source."""
    return _from_marks(marks_mode(sessions, annotator, allow_test_items, refusal), sessions, out, val_fraction, seed,
                       exclude, root, name, build_kw)


def make_kto(sessions: list[Path], out: Path, val_fraction: float = DEFAULT_VAL_FRACTION,
             annotator: str | None = None, allow_test_items: bool = False, seed: int = 0,
             exclude: list[str] | None = None, with_reference: bool = True, root: Path | None = None,
             name: str | None = None, **build_kw) -> dict:
    """KTO examples from marked sessions (``marks_mode(kto=True)``) into the folder ``out``."""
    mode = marks_mode(sessions, annotator, allow_test_items, kto=True, with_reference=with_reference)
    return _from_marks(mode, sessions, out, val_fraction, seed, exclude, root, name or "kto-from-marks", build_kw)


def _from_marks(mode: Mode, sessions: list[Path], out: Path, val_fraction: float, seed: int,
                exclude: list[str] | None, root: Path | None, name: str | None, build_kw: dict) -> dict:
    opts = PairOptions(out=str(out), val_fraction=val_fraction, seed=seed, exclude=list(exclude or []))
    return build(mode, opts, root or Path(sessions[0]).parent, name=name, quiet=True, **build_kw)

# --------------------------------------------------------------------------- the run

def _val_threshold(keys: array, fraction: float) -> int:
    """The group hash below which a group is in validation: exactly round(fraction x groups) groups."""
    import numpy as np

    uniq = np.unique(np.frombuffer(keys, dtype=np.uint64)) if len(keys) else np.zeros(0, dtype=np.uint64)
    n_val = min(int(round(len(uniq) * fraction)), len(uniq) - 1)  # training keeps at least one group
    if n_val <= 0:
        return 0
    return int(uniq[n_val]) if n_val < len(uniq) else 2**64


def _out_lock(out: Path):
    from engine.session import WriterLock

    return WriterLock(out / "pairs", "builder", message=f"{out} is being written by another `rounds pairs`",
                      hint="wait until it finishes, or give another --out")


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.suffix in (".jsonl", ".json", ".csv"):
        raise UserError(f"{out}: --out is a folder here (it gets {TRAIN_FILE}, {VAL_FILE} and {REPORT_JSON})",
                        field="--out", hint=f"e.g. --out {path.with_suffix('')}")
    if path.exists() and not path.is_dir():
        raise UserError(f"{out}: exists and is not a folder", field="--out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rows(path: Path, report: DataReport, required: tuple[str, ...], counter: list[int]) -> Iterator[tuple[int, dict]]:
    """Source records as dicts; a CSV header is checked for the named columns first."""
    fmt = detect_format(path)
    report.format = fmt
    for line, rec in read_records(path, fmt, report):
        if isinstance(rec, dict) and "__header__" in rec:
            header = rec["__header__"]
            missing = [c for c in required if c not in header]
            if missing:
                alike = [h for h in header if h.lower() == missing[0].lower()]
                raise UserError(f"missing column {missing[0]!r}; the columns are: {', '.join(header)}",
                                file=str(path), line=line, field=missing[0],
                                hint=f"use {alike[0]!r}" if alike else "check the column flags")
            continue
        counter[0] += 1
        if not isinstance(rec, dict):
            report.add(f"expected a JSON object, got {type(rec).__name__}", line=line)
            continue
        yield line, rec


def build(mode: Mode, opts: PairOptions, root: Path | None = None, *, name: str | None = None,
          command: list[str] | None = None, shared: bool = False, quiet: bool = False,
          echo: Callable[[str], None] = print) -> dict:
    """Run one mode over its source: the two passes, the files, the report, the session."""
    try:
        return _build(mode, opts, root, name=name, command=command, shared=shared, quiet=quiet)
    finally:
        if mode.temporary_source:
            Path(mode.source).unlink(missing_ok=True)


def _build(mode: Mode, opts: PairOptions, root: Path | None, *, name: str | None, command: list[str] | None,
           shared: bool, quiet: bool) -> dict:
    if not 0 <= opts.val_fraction < 1:
        raise UserError("--val-fraction must be at least 0 and below 1", field="--val-fraction")
    if opts.max_pairs_per_group < 1:
        raise UserError("--max-pairs-per-group must be at least 1", field="--max-pairs-per-group")
    src = Path(mode.source)
    if not src.exists():
        raise UserError(f"{src}: no such file", field=f"--from-{mode.name}", hint="check the path")
    if src.is_dir() and not is_saved_dataset(src):
        raise UserError(f"{src}: is a folder, not a data file", field=f"--from-{mode.name}",
                        hint="give a data file (JSONL, JSON, CSV, TSV, Parquet), or a folder `datasets`' "
                             "save_to_disk wrote")
    if data_size(src) == 0:
        raise UserError(f"{src}: the file is empty", field=f"--from-{mode.name}",
                        hint="it needs one record per line (or a CSV header and rows)")
    out = _check_out(opts.out)
    with _out_lock(out):  # one builder at a time writes a folder
        held = read_held_out(opts.exclude)
        lengths = LengthCheck(opts.tokenizer, opts.max_length)
        writer = None
        if root is not None:
            writer = SessionWriter.create(root, "pairs", name=name or f"from-{mode.name}", stage=f"from-{mode.name}",
                                          command=command, shared=shared,
                                          config={"mode": mode.name, "source": mode.describe or str(src),
                                                  **mode.settings, **{k: v for k, v in asdict(opts).items()}})
            writer.set_status("running")
        report = DataReport(file=str(src), kind=f"pairs from {mode.name}")
        size = data_size(src)
        n_buckets = max(1, math.ceil(size / BUCKET_BYTES))
        buckets = Buckets(n_buckets, out)
        counter = [0]
        keys = array("Q")  # each candidate's group hash: 8 bytes a row
        dropped: Counter = Counter()
        t0 = time.monotonic()
        try:
            progress = Progress(writer, size, "MiB", quiet=quiet)
            for line, rec in _rows(src, report, mode.required, counter):
                cand = mode.extract(line, rec, report)
                if cand is not None:
                    why = held.reason(cand.id, cand.key, cand.data.get("prompt"))
                    if why:
                        dropped[why] += 1
                    else:
                        buckets.add(cand)
                        keys.append(_h64(cand.key, f"split{opts.seed}"))
                if counter[0] % 2000 == 0:
                    progress.update(report.bytes_read, counter[0])
            progress.update(size, counter[0], force=True)
            progress.close()
            val_below = _val_threshold(keys, opts.val_fraction)
            candidates = len(keys)
            del keys
            sink = PairSink(out, val_below, opts.seed, lengths, kto=mode.kto)
            pairing = Progress(writer, candidates, "rows", quiet=quiet, label="pairing")
            done, complete = 0, False
            try:
                for group in buckets.groups(on_bucket=sink.new_bucket):
                    wrote = mode.pairs(group, sink, dropped)
                    sink.end_group(group[0]["k"], wrote)
                    done += len(group)
                    if done % 2000 < len(group):
                        pairing.update(done, done)
                pairing.update(candidates, candidates, force=True)
                pairing.close()
                complete = True
            finally:  # nothing written, nothing replaced: the previous files in --out stay as they were
                sink.close(commit=complete and sink.counts["train"] + sink.counts["val"] > 0)
        except BaseException as e:
            buckets.cleanup()
            if sys.stderr.isatty() and not quiet:
                sys.stderr.write("\n")  # end the progress bar's line before the message
            if writer:
                reason = "interrupted" if isinstance(e, KeyboardInterrupt) else (
                    e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
                if isinstance(e, KeyboardInterrupt):  # stopped, not failed: the previous output is kept
                    writer.event(EVENT, kind=ERROR, message=reason)
                    writer.set_status("stopped", error=reason)
                else:
                    writer.fail(reason)
                writer.close()
            raise
        buckets.cleanup()
        malformed = len({p.line for p in report.errors}) + report.problems_dropped  # rows, not problems
        if malformed:
            dropped["malformed source rows"] = malformed
        rep = _report(mode, opts, src, report, counter[0], sink, dropped, held, time.monotonic() - t0, writer)
        _write_report(out, rep)
        if sink.counts["train"] + sink.counts["val"] == 0:
            why = ", ".join(f"{k} {v}" for k, v in rep["dropped"].items()) or "no rows"
            message = f"no {'examples' if mode.kto else 'pairs'} came out of {mode.describe or src}: {why}"
            if writer:
                write_json_atomic(writer.path / REPORT_JSON, rep, file_mode(writer.path))
                writer.fail(message)
                writer.close()
            raise UserError(message, hint=f"see {out / REPORT_MD}")
        if writer:
            _write_used(writer.path, Path(rep["train"]), sink.fingerprints)
            write_json_atomic(writer.path / REPORT_JSON, rep, file_mode(writer.path))
            unit = "examples" if mode.kto else "pairs"
            writer.event(EVENT, kind=FINISHED, dropped=rep["dropped"],
                         **{f"train_{unit}": sink.counts["train"], f"val_{unit}": sink.counts["val"]})
            writer.set_status("finished")
            writer.close()
        return rep


def _write_used(session: Path, pairs_file: Path, fingerprints) -> None:
    """used_for_pairs.json (the questions' fingerprints, for `compare`'s leak warning), streamed out."""
    tmp = session / f".{USED_FOR_PAIRS}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode(session))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write('{"pairs": ' + json.dumps(str(pairs_file)) + ', "questions": [')
        fingerprints.seek(0)
        for i, line in enumerate(fingerprints):
            f.write(("," if i else "") + json.dumps(line.strip()))
        f.write("]}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, session / USED_FOR_PAIRS)
    fingerprints.close()


def _report(mode: Mode, opts: PairOptions, src: Path, data: DataReport, rows: int, sink: PairSink,
            dropped: Counter, held: HeldOut, seconds: float, writer: SessionWriter | None) -> dict:
    unit = "examples" if mode.kto else "pairs"
    rep = {
        "mode": mode.name, "format": "kto" if mode.kto else "dpo", "source": mode.describe or str(src),
        "settings": mode.settings, "out": str(Path(opts.out)),
        "train": str(Path(opts.out) / sink.names["train"]), "val": str(Path(opts.out) / sink.names["val"]),
        f"train_{unit}": sink.counts["train"], f"val_{unit}": sink.counts["val"],
        "train_groups": sink.groups["train"], "val_groups": sink.groups["val"],
        "val_fraction": opts.val_fraction, "seed": opts.seed,
        "source_rows": {"read": rows, "used": sink.lines_count, "used_lines": sink.used_ranges(),
                        "per_pair": SOURCES_FILE},
        "dropped": dict(sorted(dropped.items(), key=lambda kv: -kv[1])) | dict(sink.dropped),
        "problems": [str(p) for p in data.problems[:50]],
        "problems_total": len(data.problems) + data.problems_dropped,
        "excluded_from": held.sources,
        "max_length": opts.max_length,
        "seconds": round(seconds, 2),
        "session": writer.id if writer else None,
    }
    if mode.kto:
        desirable, undesirable = sink.counts["desirable"], sink.counts["undesirable"]
        rep.update(desirable=desirable, undesirable=undesirable,
                   sources={k: v for k, v in sink.counts.items() if k.startswith(("desirable:", "undesirable:"))})
        if not desirable or not undesirable:
            rep["warning"] = "every example has the same label: KTO needs desirable and undesirable answers"
        elif not 1 <= desirable / undesirable <= 4 / 3:
            # the KTO paper (and TRL's check): desirable weight x count / (undesirable weight x count) in [1, 4/3]
            if desirable > undesirable:
                flag, weight = "--undesirable-weight", desirable / undesirable * 6 / 7
            else:
                flag, weight = "--desirable-weight", undesirable / desirable * 7 / 6
            rep["suggested_weight"] = {flag: round(weight, 2)}
            rep["warning"] = (f"{desirable} desirable vs {undesirable} undesirable examples: train with {flag} "
                              f"{weight:.2f} (KTO wants desirable weight x count / (undesirable weight x count) "
                              "between 1 and 4/3)")
        return rep
    ratios = _percentiles(sink.ratios)
    rep["chosen_rejected_length_ratio"] = ratios
    for k in ("reference as chosen", "sample as chosen", "over-refusal", "keep answering"):
        if sink.counts[k]:
            rep.setdefault("chosen_from", {})[k] = sink.counts[k]
    if ratios and abs(ratios["median"] - 1) > 0.3:
        rep["warning"] = ("chosen and rejected answers differ in length (median ratio "
                          f"{ratios['median']}): DPO learns length preferences as readily as factual ones")
    return rep


def report_markdown(rep: dict) -> str:
    unit = "examples" if rep.get("format") == "kto" else "pairs"
    title = "KTO examples" if unit == "examples" else "Preference pairs"
    lines = [f"# {title} from {rep['mode']}: {rep['source']}", "",
             f"- train: **{rep[f'train_{unit}']:,}** {unit} ({rep['train_groups']:,} groups) in `{rep['train']}`",
             f"- validation: **{rep[f'val_{unit}']:,}** {unit} ({rep['val_groups']:,} groups) in `{rep['val']}` "
             f"(val fraction {rep['val_fraction']}, split by group, seed {rep['seed']})",
             f"- source rows: {rep['source_rows']['read']:,} read, {rep['source_rows']['used']:,} used "
             f"(lines {rep['source_rows']['used_lines'] or '-'}; every pair's rows in `{SOURCES_FILE}`)",
             f"- time: {rep['seconds']} s", ""]
    if rep.get("chosen_from"):
        lines += ["## Chosen answers", ""] + [f"- {k}: {v:,}" for k, v in rep["chosen_from"].items()] + [""]
    if unit == "examples":
        lines += ["## Examples", "", f"- desirable: {rep['desirable']:,}", f"- undesirable: {rep['undesirable']:,}"]
        lines += [f"  - {k}: {v:,}" for k, v in rep["sources"].items()] + [""]
    lines += ["## Dropped", ""]
    lines += [f"- {k}: {v:,}" for k, v in rep["dropped"].items()] or ["- nothing"]
    if rep["excluded_from"]:
        lines += ["", "## Held out (--exclude)", ""] + [
            f"- {e['source']}: {e['ids']:,} ids, {e['questions']:,} question texts" for e in rep["excluded_from"]]
    r = rep.get("chosen_rejected_length_ratio")
    if r:
        lines += ["", "## Chosen / rejected length (words)", "",
                  f"mean {r['mean']}, min {r['min']}, p5 {r['p5']}, p25 {r['p25']}, median {r['median']}, "
                  f"p75 {r['p75']}, p95 {r['p95']}, max {r['max']}", "",
                  "| ratio | pairs |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in r["histogram"].items()]
    if rep.get("warning"):
        lines += ["", f"**Warning:** {rep['warning']}"]
    if rep["problems"]:
        lines += ["", f"## Source problems ({rep['problems_total']:,}; rows skipped)", ""] + \
                 [f"- {p}" for p in rep["problems"]]
    return "\n".join(lines) + "\n"


def _write_report(out: Path, rep: dict) -> None:
    write_json_atomic(out / REPORT_JSON, rep, 0o644)
    tmp = out / f".{REPORT_MD}.tmp"
    tmp.write_text(report_markdown(rep), encoding="utf-8")
    os.replace(tmp, out / REPORT_MD)


def summary(rep: dict) -> str:
    """What `rounds pairs` prints about what it wrote, whatever the source."""
    unit = "examples" if rep.get("format") == "kto" else "pairs"
    lines = [f"rounds: {rep[f'train_{unit}']:,} training {unit} in {rep['train']}, {rep[f'val_{unit}']:,} in "
             f"{rep['val']} ({rep['train_groups']:,} / {rep['val_groups']:,} "
             f"{'groups' if rep['mode'] == 'labels' else 'questions'})"]
    lines.append(f"  source rows: {rep['source_rows']['read']:,} read, {rep['source_rows']['used']:,} used")
    dropped = ", ".join(f"{k} {v:,}" for k, v in (rep.get("dropped") or {}).items())
    if dropped:
        lines.append("  dropped: " + dropped)
    if unit == "examples":
        lines.append(f"  desirable {rep['desirable']:,}, undesirable {rep['undesirable']:,}")
        lines += [f"    {k}: {v:,}" for k, v in rep["sources"].items()]
    lines += [f"  {k}: {v:,}" for k, v in (rep.get("chosen_from") or {}).items()]
    r = rep.get("chosen_rejected_length_ratio")
    if r:
        lines.append(f"  chosen/rejected length ratio: median {r['median']}, p5 {r['p5']}, p95 {r['p95']}")
    if rep.get("warning"):
        lines.append(f"  warning: {rep['warning']}")
    if rep["problems_total"]:
        lines.append(f"  {rep['problems_total']:,} source row(s) could not be read and were skipped; the first:")
        lines += ["    " + line.replace("\n", "\n    ") for line in rep["problems"][:5]]
    lines.append(f"  report: {Path(rep['out']) / REPORT_MD}" + (f"   session: {rep['session']}" if rep["session"]
                                                                else ""))
    stage = "kto" if unit == "examples" else "dpo"
    weight = "".join(f" {k} {v}" for k, v in (rep.get("suggested_weight") or {}).items())
    lines.append(f"  train on them: rounds train {stage} --model MODEL --data {rep['train']}"
                 + (f" --val {rep['val']}" if rep[f"val_{unit}"] else "") + weight)
    return "\n".join(lines)
