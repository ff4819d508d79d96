"""Data files: reading, column mapping and validation that names every problem.

Files: JSONL, a JSON array, CSV, TSV, Parquet, or a folder written by ``datasets``'
``save_to_disk`` (a ``DatasetDict``'s ``train`` split unless the split's own folder is given).
Kinds of data, one ``Kind`` each in ``KINDS``:

- ``sft``:  ``question``, ``answer``; optional ``context``, ``id``
- ``test``: ``question``, ``reference``; optional ``context``, ``id``, ``answer``
- ``dpo``:  TRL's preference format, ``prompt``/``chosen``/``rejected`` as strings, or
  conversational (lists of ``{"role", "content"}`` messages); optional ``id``. TRL's
  implicit-prompt layout (``chosen``/``rejected`` only, each the whole conversation) is read
  too: the prompt is their common beginning, as TRL's ``extract_prompt`` takes it.

A training stage with data of its own registers its kind with ``register_kind`` from its
module (``engine/stages/kto.py`` does: unpaired ``prompt``/``completion``/``label``).

Real files name their columns differently, so each canonical field can be mapped to a
column of the file (``columns={"question": "Question", "answer": "Response"}``).

Files are read a line (a Parquet/Arrow batch) at a time with a cap on the line length, so a
2 GB line is reported, not loaded. Every problem carries the file, line (row) and field, and a
hint. ``validate_file(..., keep_rows=False)`` keeps a sample of the valid rows instead of all
of them: its memory grows with the number of rows (a digest and an id each), not their text.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError


@dataclass(frozen=True)
class Kind:
    """A kind of data file: its fields, how a row is checked beyond them, and how a row renders
    as chat messages (prompt, answers) for token counts."""

    name: str
    label: str  # how `rounds validate` names it ("SFT data")
    required: tuple[str, ...]
    optional: tuple[str, ...]
    # (row, line, column mapping, report) -> keep the row? None: every field named in text_fields must be text
    check: Callable[[dict, int, dict, DataReport], bool] | None
    # row -> (prompt messages, [answer messages, ...]): one rendered sequence per answer
    messages: Callable[[dict], tuple[list[dict], list[list[dict]]]]
    text_fields: tuple[str, ...] = ()
    # (record, column mapping) -> what it filled in, e.g. "implicit prompt", or None: fields a layout
    # of the kind leaves implicit (TRL's implicit-prompt preference data), filled in before the checks
    derive: Callable[[dict, dict], str | None] | None = None
    implicit: tuple[str, ...] = ()  # the fields derive may fill in (a file may lack their column)
    derive_hint: str | None = None  # added to "missing field" for those when derive could not fill them in


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


def kinds() -> dict[str, Kind]:
    """Every kind, those the training stages register included (imported on first need)."""
    import engine.stages  # noqa: F401 - registers the stages' own kinds

    return KINDS


ROLES = ("system", "user", "assistant", "tool")
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_JSON_ARRAY_BYTES = 256 * 1024 * 1024
MAX_PROBLEMS_KEPT = 10_000


@dataclass
class Problem:
    message: str
    file: str
    line: int | None = None
    field: str | None = None
    hint: str | None = None
    severity: str = "error"  # or "warning"
    unit: str = "line"  # "row" in Parquet and Arrow files

    def __str__(self) -> str:
        where = [self.file]
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.field:
            where.append(f"field {self.field!r}")
        text = f"{', '.join(where)}: {self.severity}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


@dataclass
class DataReport:
    file: str
    kind: str
    format: str = "?"
    rows: list[dict] = field(default_factory=list)  # valid rows, canonical field names, with "line"
    records_seen: int = 0
    problems: list[Problem] = field(default_factory=list)
    problems_dropped: int = 0
    bytes_read: int = 0  # how far the reader is into the file (progress bars)
    conversational: bool | None = None  # kinds with message-list fields (dpo, kto)
    token_stats: dict | None = None
    valid: int = 0  # valid rows (``rows`` holds them all, or a sample of them with keep_rows=False)
    derived: dict = field(default_factory=dict)  # what a layout left implicit -> rows it was filled in for
    unit: str = "line"
    notes: list[str] = field(default_factory=list)  # said once, not problems (which split was read)

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.valid

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors and self.problems_dropped == 0

    def add(self, message: str, line: int | None = None, field: str | None = None, hint: str | None = None,
            severity: str = "error") -> None:
        if len(self.problems) >= MAX_PROBLEMS_KEPT:
            self.problems_dropped += 1
            return
        self.problems.append(Problem(message, self.file, line, field, hint, severity, self.unit))

    def to_json(self) -> dict:
        return {
            "file": self.file, "kind": self.kind, "format": self.format,
            "records": self.records_seen, "valid_rows": self.valid, "derived": self.derived, "notes": self.notes,
            "token_stats_rows": len(self.rows) if self.token_stats else 0,  # a sample when fewer than valid_rows
            "errors": len(self.errors) + self.problems_dropped, "warnings": len(self.warnings),
            "conversational": self.conversational, "token_stats": self.token_stats,
            "problems": [asdict(p) for p in self.problems],
        }


# --------------------------------------------------------------------------- reading lines

def _lines(path: Path, report: DataReport) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line, decoded as UTF-8; overlong and undecodable
    lines are reported and skipped without ever holding more than the cap in memory."""
    with open(path, "rb") as f:
        n = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            n += 1
            report.bytes_read += len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                total = len(raw)
                while True:  # skip the rest of the line in bounded chunks
                    more = f.readline(1024 * 1024)
                    total += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                report.add(f"line is {total / 2**20:,.0f} MiB long (the limit is {MAX_LINE_BYTES // 2**20} MiB); "
                           "it was not read", line=n,
                           hint="is this really one record per line? split it, or check the file was not damaged")
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.add(f"not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line", line=n,
                           hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)")
                continue
            yield n, text


def is_saved_dataset(path: Path) -> bool:
    """A folder `datasets`' ``save_to_disk`` wrote (a ``Dataset`` or a ``DatasetDict``)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def data_size(path: Path) -> int:
    """Bytes of a data file, or of every file in a saved dataset's folder (for progress)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def detect_format(path: Path) -> str:
    if path.is_dir():  # a folder written by `datasets`' save_to_disk (a Dataset, or a DatasetDict)
        return "arrow"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".tsv":
        return "tsv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    with open(path, "rb") as f:
        raw = f.read(4096)
    if raw.startswith(b"PAR1"):
        return "parquet"
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl"
    return "csv"


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # a \uD800-\uDFFF escape in the raw text
LONE_SURROGATE = "text with an unpaired surrogate escape (\\ud800-\\udfff): not a character, cannot be written as UTF-8"
LONE_SURROGATE_HINT = "fix or remove that escape (a pair like \\ud83d\\ude00 is one character and is fine)"


def _lone_surrogate(value: Any) -> bool:
    """A text anywhere in ``value`` holding half of a UTF-16 pair (json.loads lets one through)."""
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def read_records(path: Path, fmt: str, report: DataReport) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) pairs; parse problems go to the report. Parquet and Arrow
    give their column names first as a ``__header__`` record, as CSV does, and number rows."""
    if fmt == "parquet":
        yield from _parquet_records(path, report)
        return
    if fmt == "arrow":
        yield from _arrow_records(path, report)
        return
    if fmt == "jsonl":
        for n, text in _lines(path, report):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                report.add(f"invalid JSON: {e.msg} (column {e.colno})", line=n,
                           hint="each line must be one complete JSON object")
                continue
            except RecursionError:
                report.add("JSON nested too deeply to read", line=n, hint="a record is an object of text fields")
                continue
            if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(rec):
                report.add(LONE_SURROGATE, line=n, hint=LONE_SURROGATE_HINT)
                continue
            yield n, rec
    elif fmt == "json":
        size = path.stat().st_size
        if size > MAX_JSON_ARRAY_BYTES:
            report.add(f"a JSON array of {size / 2**20:,.0f} MiB is too big to load at once",
                       hint="convert it to JSONL (one object per line), e.g. `jq -c '.[]' IN > OUT.jsonl`")
            return
        text = "".join(t for _, t in _lines(path, report))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            report.add(f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno)
            return
        except RecursionError:
            report.add("JSON nested too deeply to read", hint="a record is an object of text fields")
            return
        if not isinstance(data, list):
            report.add("the file is JSON but not an array of records",
                       hint="use JSONL (one object per line) or a JSON array of objects")
            return
        check = bool(_SURROGATE_ESCAPE.search(text))
        for i, rec in enumerate(data):
            if check and _lone_surrogate(rec):
                report.add(LONE_SURROGATE, line=i + 1, hint=LONE_SURROGATE_HINT)
                continue
            yield i + 1, rec  # "line" means record number in a JSON array
    else:
        yield from _csv_records(path, "\t" if fmt == "tsv" else ",", report)


def _csv_records(path: Path, delimiter: str, report: DataReport) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(MAX_LINE_BYTES)
    numbered = _lines(path, report)
    current = [0]

    def texts() -> Iterator[str]:
        for n, text in numbered:
            current[0] = n
            yield text

    reader = csv.reader(texts(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        report.add(f"cannot read the CSV header: {e}", line=current[0])
        return
    header = [h.strip() for h in header]
    seen: set[str] = set()
    for h in header:
        if h in seen:
            report.add(f"the header names column {h!r} twice", line=1, field=h,
                       hint="rename one of them: which one holds the data is otherwise a guess")
            return
        seen.add(h)
    yield 1, {"__header__": header}
    while True:
        start = current[0] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            report.add(f"CSV error: {e}", line=current[0], hint="check the quoting on this line")
            return
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            report.add(f"has {len(row)} columns but the header has {len(header)}", line=start,
                       hint="a field with a comma or newline in it must be in double quotes")
            continue
        yield start, dict(zip(header, row, strict=True))


BATCH_ROWS = 512  # rows decoded at a time from Parquet and Arrow files


def _pyarrow(report: DataReport, what: str):
    try:
        import pyarrow as pa
    except ImportError:
        report.add(f"reading {what} needs pyarrow", hint="pip install pyarrow (it comes with `datasets`)")
        return None
    return pa


def _plain(value: Any) -> Any:
    """A Parquet/Arrow value as JSON has it (dates, decimals and bytes as text), for the rows'
    extra columns, which an evaluation writes into its results."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _batches(batches, names: list[str], report: DataReport, where: str) -> Iterator[tuple[int, Any]]:
    yield None, {"__header__": names}
    n = 0
    try:
        for batch in batches:
            report.bytes_read += batch.nbytes
            for start in range(0, batch.num_rows, BATCH_ROWS):  # a saved dataset's batches can be big
                for rec in batch.slice(start, BATCH_ROWS).to_pylist():
                    n += 1
                    yield n, {k: _plain(v) for k, v in rec.items()}
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged file are many
        report.add(f"cannot read {where} after row {n}: {str(e).splitlines()[0][:300]}", line=n + 1,
                   hint="the file is damaged or cut short: write it again")


def _parquet_records(path: Path, report: DataReport) -> Iterator[tuple[int, Any]]:
    report.unit = "row"
    pa = _pyarrow(report, "Parquet")
    if pa is None:
        return
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        names = pf.schema_arrow.names
    except Exception as e:  # noqa: BLE001
        report.add(f"not a readable Parquet file: {str(e).splitlines()[0][:300]}",
                   hint="check it was written completely (pandas `to_parquet`, `datasets` `to_parquet`)")
        return
    # one thread: a reader per column in flight would hold their row groups at once (bounded memory)
    yield from _batches(pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False), names, report, "the Parquet file")


def _arrow_records(path: Path, report: DataReport) -> Iterator[tuple[int, Any]]:
    """A folder `datasets`' ``save_to_disk`` wrote: ``state.json`` names its Arrow stream files;
    a ``DatasetDict`` folder holds one such folder a split (``train`` is read unless one is given)."""
    report.unit = "row"
    folder = path
    if not (folder / "state.json").is_file() and (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            splits = [str(x) for x in splits]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            report.add(f"dataset_dict.json cannot be read: {e}", field="splits")
            return
        if "train" not in splits:
            report.add(f"a DatasetDict folder without a 'train' split; its splits are: {', '.join(splits)}",
                       hint=f"give the split's folder: {path / (splits[0] if splits else 'SPLIT')}")
            return
        folder = path / "train"
        if len(splits) > 1:
            report.notes.append(f"read split 'train' of {', '.join(splits)} (give {path}/SPLIT for another)")
    try:
        state = json.loads((folder / "state.json").read_text())
        files = [folder / str(f["filename"]) for f in state["_data_files"]]
    except FileNotFoundError:
        report.add("is a folder, but not one `datasets` saved (no state.json or dataset_dict.json in it)",
                   hint="give a data file (JSONL, JSON, CSV, TSV, Parquet), or a folder from save_to_disk")
        return
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        report.add(f"{folder / 'state.json'} cannot be read: {e}", field="_data_files",
                   hint="save the dataset again with save_to_disk")
        return
    pa = _pyarrow(report, "a saved dataset")
    if pa is None:
        return
    missing = [f.name for f in files if not f.is_file() or f.parent != folder]
    if missing or not files:
        report.add(f"the dataset's data file(s) are missing: {', '.join(missing) or '(none listed)'}",
                   hint="copy the whole folder save_to_disk wrote")
        return

    def batches():
        for f in files:
            with pa.memory_map(str(f)) as source:
                yield from pa.ipc.open_stream(source)

    try:
        with pa.memory_map(str(files[0])) as source:
            names = pa.ipc.open_stream(source).schema.names
    except Exception as e:  # noqa: BLE001
        report.add(f"{files[0].name} is not an Arrow stream `datasets` wrote: {str(e).splitlines()[0][:300]}",
                   hint="save the dataset again with save_to_disk")
        return
    yield from _batches(batches(), names, report, files[0].name if len(files) == 1 else "the dataset")


# --------------------------------------------------------------------------- validation

def _flag(canonical: str) -> str:
    return f"--{canonical}"


def validate_file(path: str | os.PathLike, kind: str, columns: dict[str, str] | None = None,
                  keep_rows: bool = True) -> DataReport:
    """Read ``path`` as data of ``kind`` and report every problem found. ``keep_rows=False``:
    ``rows`` is a seeded sample of at most ``SAMPLE_ROWS`` valid rows (``valid`` counts them all)."""
    if kind not in kinds():
        raise UserError(f"unknown data kind {kind!r}", field="--kind", hint=f"use one of: {', '.join(KINDS)}")
    path = Path(path)
    report = DataReport(file=str(path), kind=kind)
    k = KINDS[kind]
    required, optional = k.required, k.optional
    mapping = {c: c for c in required + optional}
    for canonical, source in (columns or {}).items():
        if canonical not in mapping:
            raise UserError(f"{canonical!r} is not a field of {kind} data",
                            hint=f"{kind} fields are: {', '.join(required + optional)}")
        mapping[canonical] = source

    if not path.exists():
        raise UserError(f"{path}: no such file", hint="check the path")
    if path.is_dir() and not is_saved_dataset(path):
        raise UserError(f"{path}: is a folder, not a data file",
                        hint="give a data file (JSONL, JSON, CSV, TSV, Parquet), or a folder `datasets`' "
                             "save_to_disk wrote")
    if path.is_file() and path.stat().st_size == 0:
        report.add("the file is empty", hint=f"it needs one record per line with the fields {', '.join(required)}")
        return report

    fmt = detect_format(path)
    report.format = fmt
    seen_ids: dict[str, int] = {}
    seen_rows: dict[int, int] = {}  # a 64-bit digest of a row's content -> its line: bounded memory
    header_missing: list[str] = []
    got_header = False
    sample = random.Random(0)

    for line, rec in read_records(path, fmt, report):
        if isinstance(rec, dict) and "__header__" in rec:
            got_header = True
            header = rec["__header__"]
            # a layout that leaves a field implicit has no column for it: said row by row if not filled in
            header_missing = [mapping[c] for c in required if mapping[c] not in header and c not in k.implicit]
            for col in header_missing:
                canonical = next(c for c in required if mapping[c] == col)
                alike = [h for h in header if h.lower() == col.lower()]
                report.add(f"missing column {col!r}; the columns are: {', '.join(header) or '(none)'}",
                           line=line, field=col,
                           hint=f"map it: {_flag(canonical)} {alike[0]}" if alike
                           else f"rename the column, or map it: {_flag(canonical)} COLUMN")
            if header_missing:
                return report
            continue
        report.records_seen += 1
        if not isinstance(rec, dict):
            report.add(f"expected a JSON object, got {type(rec).__name__}", line=line)
            continue
        row = _check_record(rec, line, kind, mapping, report)
        if row is None:
            continue
        if "id" in row and row["id"] not in (None, ""):
            rid = str(row["id"])
            if rid in seen_ids:
                report.add(f"duplicate id {rid!r} (first on {report.unit} {seen_ids[rid]})", line=line,
                           field=mapping["id"], hint="ids must be unique: results and marks are joined on them")
                continue
            seen_ids[rid] = line
        key = int.from_bytes(hashlib.blake2b(
            "\0".join(json.dumps(row.get(c), sort_keys=True) for c in required).encode("utf-8", "surrogatepass"),
            digest_size=8).digest(), "big")
        if key in seen_rows:
            report.add(f"same content as {report.unit} {seen_rows[key]}", line=line, severity="warning",
                       hint="a duplicated example counts twice in training and in rates")
        else:
            seen_rows[key] = line
        row["line"] = line
        report.valid += 1
        if keep_rows or len(report.rows) < SAMPLE_ROWS:
            report.rows.append(row)
        else:  # reservoir sampling: every valid row equally likely to be in the sample
            j = sample.randrange(report.valid)
            if j < SAMPLE_ROWS:
                report.rows[j] = row

    if fmt in ("csv", "tsv", "parquet", "arrow") and got_header and report.records_seen == 0 and not report.errors:
        what = "the CSV has a header but no data rows" if fmt in ("csv", "tsv") else "the data has columns but no rows"
        report.add(what, line=1 if fmt in ("csv", "tsv") else None, hint="add rows")
    elif report.records_seen == 0 and not report.errors and not got_header:
        report.add("no records in the file", hint=f"it needs records with the fields {', '.join(required)}")
    return report


def _check_record(rec: dict, line: int, kind: str, mapping: dict[str, str], report: DataReport) -> dict | None:
    k = KINDS[kind]
    row: dict[str, Any] = {}
    ok = True
    if k.derive is not None:
        filled = k.derive(rec, mapping)
        if filled:
            report.derived[filled] = report.derived.get(filled, 0) + 1
    for canonical in k.required:
        col = mapping[canonical]
        if col in rec and rec[col] is None and report.unit == "row":  # a Parquet/Arrow column's null
            report.add("is null (empty)", line=line, field=col, hint="fill it in, or drop the row")
            ok = False
            continue
        if col not in rec:
            present = ", ".join(key for key, v in rec.items() if v is not None) or "(none)"
            report.add(f"missing field {col!r}; the fields are: {present}", line=line, field=col,
                       hint=f"add it, or map another field: {_flag(canonical)} NAME"
                       + (f"; {k.derive_hint}" if k.derive_hint and canonical in k.implicit else ""))
            ok = False
            continue
        row[canonical] = rec[col]
    for canonical in k.optional:
        col = mapping[canonical]
        if col in rec and rec[col] is not None:
            row[canonical] = rec[col]
    if not ok:
        return None
    extra = {k: v for k, v in rec.items() if k not in mapping.values()}
    if extra:  # kept, not checked: an eval carries them into its results (e.g. the demo's `answerable`)
        row["extra"] = extra

    if "id" in row and (not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool)):
        report.add(f"must be a string or a number, got {type(row['id']).__name__}", line=line, field=mapping["id"])
        return None
    if k.check is not None:
        return row if k.check(row, line, mapping, report) else None

    for canonical in k.text_fields:
        if canonical not in row:
            continue
        col = mapping[canonical]
        value = row[canonical]
        if not isinstance(value, str):
            report.add(f"must be text, got {type(value).__name__}", line=line, field=col)
            ok = False
        elif canonical in k.required and not value.strip():
            report.add("is empty", line=line, field=col, hint="fill it in or remove the row")
            ok = False
    return row if ok else None


def _check_messages(value: Any, line: int, col: str, report: DataReport) -> bool:
    if not value:
        report.add("is an empty list of messages", line=line, field=col)
        return False
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            report.add(f"message {i + 1} must be an object with 'role' and 'content'", line=line, field=col)
            return False
        if msg["role"] not in ROLES:
            report.add(f"message {i + 1} has role {msg['role']!r}", line=line, field=col,
                       hint=f"roles are: {', '.join(ROLES)}")
            return False
        if not isinstance(msg["content"], str) or not msg["content"].strip():
            report.add(f"message {i + 1} has empty content", line=line, field=col)
            return False
    return True


def check_conversation(row: dict, line: int, mapping: dict[str, str], report: DataReport,
                       fields: tuple[str, ...], answer_hint: str) -> bool:
    """``fields`` all plain strings or all message lists, in one format for the whole file (TRL
    needs one). Shared by the preference kinds (DPO pairs, KTO examples)."""
    conversational = isinstance(row[fields[0]], list)
    if report.conversational is None:
        report.conversational = conversational
    elif report.conversational != conversational:
        first = "conversational (message lists)" if report.conversational else "plain strings"
        report.add(f"mixes formats: earlier lines are {first}", line=line, field=mapping[fields[0]],
                   hint="TRL needs one format per file; convert the odd lines")
        return False
    for canonical in fields:
        col, value = mapping[canonical], row[canonical]
        if conversational:
            if not isinstance(value, list):
                report.add(f"must be a list of messages like the {fields[0]}, got {type(value).__name__}",
                           line=line, field=col)
                return False
            if not _check_messages(value, line, col, report):
                return False
        else:
            if not isinstance(value, str):
                report.add(f"must be text, got {type(value).__name__}", line=line, field=col)
                return False
            if not value.strip():
                report.add("is empty", line=line, field=col, hint=answer_hint)
                return False
    return True


def _check_dpo(row: dict, line: int, mapping: dict[str, str], report: DataReport) -> bool:
    if not check_conversation(row, line, mapping, report, ("prompt", "chosen", "rejected"),
                              "a pair needs a prompt and two different answers"):
        return False

    def normal(v: Any) -> Any:
        return v.strip() if isinstance(v, str) else [(m["role"], m["content"].strip()) for m in v]

    if normal(row["chosen"]) == normal(row["rejected"]):
        report.add("chosen and rejected are identical; the pair teaches nothing", line=line,
                   field=mapping["rejected"], hint="drop the row or fix the rejected answer")
        return False
    return True


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _common_prefix(a: Any, b: Any) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def implicit_prompt(rec: dict, mapping: dict[str, str]) -> str | None:
    """TRL's implicit-prompt preference layout: no prompt, ``chosen`` and ``rejected`` each the
    whole exchange. The prompt is their common beginning (TRL's ``extract_prompt``): the shared
    messages of two conversations, or the shared text of two strings up to its last space. A
    text prompt beside conversational answers that repeat it is dropped, as TRL does."""
    p, c, r = mapping["prompt"], mapping["chosen"], mapping["rejected"]
    if c not in rec or r not in rec:
        return None
    chosen, rejected = rec[c], rec[r]
    if p in rec and rec[p] is not None and not (isinstance(rec[p], str) and _is_messages(chosen)):
        return None  # an explicit prompt
    if _is_messages(chosen) and _is_messages(rejected):
        n = _common_prefix(chosen, rejected)
        if n == 0:
            return None  # said as a missing prompt, with the hint
        rec[p], rec[c], rec[r] = chosen[:n], chosen[n:], rejected[n:]
        return "prompt: the messages chosen and rejected begin with"
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = _common_prefix(chosen, rejected)
        cut = chosen.rfind(" ", 0, n + 1) if n < min(len(chosen), len(rejected)) else n
        if cut <= 0 or not chosen[:cut].strip():
            return None
        rec[p], rec[c], rec[r] = chosen[:cut], chosen[cut:], rejected[cut:]
        return "prompt: the text chosen and rejected begin with"
    return None


IMPLICIT_PROMPT_HINT = ("or write chosen and rejected as whole conversations that share the user's turn "
                        "(TRL's implicit-prompt layout)")


def as_messages(value: Any, role: str) -> list[dict]:
    """A plain-text field as one message; message lists as they are."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _question_messages(row: dict) -> tuple[list[dict], list[list[dict]]]:
    answer = row.get("answer") or row.get("reference")
    return [{"role": "user", "content": prompt_text(row)}], \
        ([[{"role": "assistant", "content": answer}]] if answer else [])


register_kind(Kind("sft", "SFT data", ("question", "answer"), ("context", "id"), None, _question_messages,
                   text_fields=("question", "answer", "context")))
register_kind(Kind("test", "test set", ("question", "reference"), ("context", "id", "answer"), None,
                   _question_messages, text_fields=("question", "reference", "context", "answer")))
register_kind(Kind("dpo", "DPO pairs", ("prompt", "chosen", "rejected"), ("id",), _check_dpo,
                   lambda r: (as_messages(r["prompt"], "user"),
                              [as_messages(r["chosen"], "assistant"), as_messages(r["rejected"], "assistant")]),
                   derive=implicit_prompt, implicit=("prompt",), derive_hint=IMPLICIT_PROMPT_HINT))


# --------------------------------------------------------------------------- loading for use

def assign_ids(rows: list[dict]) -> list[dict]:
    """Every row an id, unique by construction: a row's own id as text, else ``line-N`` (its line),
    with a suffix when a row of the file already carries that id (validation keeps given ids unique)."""
    taken = {str(r["id"]) for r in rows if r.get("id") not in (None, "")}
    for r in rows:
        if r.get("id") not in (None, ""):
            r["id"] = str(r["id"])
            continue
        rid, n = f"line-{r['line']}", 2
        while rid in taken:
            rid, n = f"line-{r['line']}-{n}", n + 1
        taken.add(rid)
        r["id"] = rid
    return rows


def prompt_text(row: dict) -> str:
    """The user turn for a question row: training, evaluation and token counts all use this."""
    context = (row.get("context") or "").strip()
    return f"{context}\n\n{row['question']}" if context else row["question"]


def load(path: str | os.PathLike, kind: str, columns: dict[str, str] | None = None) -> list[dict]:
    """Valid rows of a data file, or a ``UserError`` that lists its first problems."""
    report = validate_file(path, kind, columns)
    if report.errors or report.problems_dropped:
        errors = report.errors
        shown = "\n".join(str(p) for p in errors[:10])
        more = len(errors) + report.problems_dropped - 10
        raise UserError(
            f"{len(errors) + report.problems_dropped} problem(s) in {path}:\n{shown}"
            + (f"\n... and {more} more" if more > 0 else ""),
            hint=f"run `rounds validate {path} --kind {kind}` for the full list",
        )
    return report.rows


# --------------------------------------------------------------------------- token lengths

def load_tokenizer_folder(path: str, field: str = "--model"):
    """A local tokenizer (nothing is downloaded), or a clear error naming the flag."""
    if not Path(path).is_dir():
        raise UserError(f"{path}: not a model folder", field=field,
                        hint="give a local folder with tokenizer files (nothing is downloaded)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load a tokenizer ({e})", field=field) from None


def _summary(values: list[int], max_length: int | None) -> dict:
    values = sorted(values)
    out = {
        "min": values[0], "median": int(statistics.median(values)),
        "p95": values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))],
        "max": values[-1], "mean": round(statistics.fmean(values), 1),
    }
    if max_length:
        out["over_max_length"] = sum(v > max_length for v in values)
    return out


def _rendered_lengths(rows: list[dict], kind: str, tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """Token counts of prompts, answers and whole examples (one per answer: a DPO pair gives two)
    as the chat template renders them."""
    def render(messages: list[dict], generation_prompt: bool) -> int:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        return len(tokenizer("\n".join(m["content"] for m in messages))["input_ids"])

    to_messages = kinds()[kind].messages
    prompts, answers, totals = [], [], []
    for row in rows:
        prompt, answer_sets = to_messages(row)
        p = render(prompt, True)
        prompts.append(p)
        for ans in answer_sets:
            t = render(prompt + ans, False)
            totals.append(t)
            answers.append(t - p)
    return prompts, answers, totals


def token_stats(report: DataReport, tokenizer: Any, max_length: int | None = None) -> dict:
    """Token counts of prompts, answers and whole examples as the chat template renders them."""
    prompts, answers, totals = _rendered_lengths(report.rows, report.kind, tokenizer)
    stats = {"prompt": _summary(prompts, None)} if prompts else {}
    if answers:
        stats["answer"] = _summary(answers, None)
        stats["total"] = _summary(totals, max_length)
    if max_length:
        stats["max_length"] = max_length
    report.token_stats = stats
    return stats


SAMPLE_ROWS = 2000


def example_lengths(model: str, rows: list[dict], kind: str, sample: int = SAMPLE_ROWS) -> list[int] | None:
    """Token lengths of the examples (chosen and rejected for DPO) as the model folder's chat
    template renders them — of a seeded random sample of ``sample`` rows when there are more —
    for the planner's memory and time. None where the tokenizer can't be loaded (a bare
    config.json, one that needs remote code): the plan then assumes --max-length."""
    import random

    try:
        tokenizer = load_tokenizer_folder(model)
    except Exception:
        return None
    if len(rows) > sample:
        rows = random.Random(0).sample(rows, sample)
    return _rendered_lengths(rows, kind, tokenizer)[2] or None


def format_report(report: DataReport, max_problems: int = 50) -> str:
    """The text ``rounds validate`` prints."""
    out = io.StringIO()
    kind_text = KINDS[report.kind].label if report.kind in KINDS else report.kind
    fmt = {"parquet": "Parquet", "arrow": "save_to_disk folder"}.get(report.format, report.format.upper())
    extra = ""
    if report.conversational is not None:
        extra = ", conversational" if report.conversational else ", plain strings"
    records = "rows" if report.unit == "row" else "records"
    out.write(f"{report.file}: {kind_text} ({fmt}{extra}): {report.records_seen} {records}, "
              f"{report.valid} valid\n")
    for note in report.notes:
        out.write(f"note: {note}\n")
    for what, n in report.derived.items():
        out.write(f"implicit {what} ({n} {records})\n")
    shown = report.problems if max_problems <= 0 else report.problems[:max_problems]
    for p in shown:
        out.write(f"{p}\n")
    hidden = len(report.problems) - len(shown) + report.problems_dropped
    if hidden > 0:
        out.write(f"... {hidden} more problem(s) not shown (use --max-problems 0 or --json for all)\n")
    if report.token_stats:
        if report.sampled:
            out.write(f"tokens of a random sample of {len(report.rows)} of the {report.valid} valid rows:\n")
        for part in ("prompt", "answer", "total"):
            s = report.token_stats.get(part)
            if s:
                over = f", {s['over_max_length']} over --max-length {report.token_stats['max_length']}" \
                    if "over_max_length" in s else ""
                out.write(f"tokens {part:<6}: min {s['min']}, median {s['median']}, p95 {s['p95']}, "
                          f"max {s['max']}{over}\n")
    n_err, n_warn = len(report.errors) + report.problems_dropped, len(report.warnings)
    verdict = "OK" if n_err == 0 else "FAILED"
    out.write(f"{verdict}: {n_err} error(s), {n_warn} warning(s)\n")
    return out.getvalue()
