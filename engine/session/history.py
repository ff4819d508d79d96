"""A session's history: what its ``events.jsonl`` adds up to, bounded, kept beside it in ``history.json``.

Opening a session must cost what the screen shows, not what the run wrote: a night of DPO is a
million events. ``Digest.feed(records)`` folds events into a bounded summary — the newest status,
step, ETA and system record, every metric as a ``Series`` (its newest ``RECENT`` points exactly and
the whole run in at most ``BUCKETS`` buckets whose width doubles as the run grows), the host and GPU
samples the panels draw, and the last ``NOTABLE`` events the log shows — so its size does not grow
with the run.

``history.json`` holds one ``Digest`` and how far into ``events.jsonl`` it reaches. The events are
the record; the history is a cache any reader may rebuild:

* line 1, the header: ``format``, ``version`` (of the digest's rules), ``offset`` (bytes of
  ``events.jsonl`` covered, always at a line end), ``lines`` (complete lines covered), ``mtime_ns``
  (the events file's when it was read), ``tail`` (a hash of the up to 4 KiB before ``offset``),
  what a listing needs: ``status``, ``step``, ``max_steps``, ``last_event_time``; and ``body``, a hash
  of line 2;
* line 2: the digest (``Digest.to_json``).

``History.load`` trusts the file only as far as the events agree: the hash of the bytes before
``offset`` must match (else the events were replaced or edited: rebuilt from the start); events
written since (``offset`` < size) are read from ``offset`` on, never from the start. A missing,
damaged or other-version file is rebuilt. The run writes it (``SessionWriter``, every
``HISTORY_EVERY`` seconds (engine.session) and when it ends); a reader that had to rebuild it saves what it built.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import deque
from pathlib import Path

from engine.session import layout as L

FORMAT = 1
VERSION = 1  # the digest's rules (sizes, what is kept): another version is rebuilt, never misread
RECENT = 256  # newest points of a series, kept exactly
BUCKETS = 256  # the whole run of a series in at most this many buckets
SAMPLES = 600  # host and GPU samples kept for the panels' sparklines (20 minutes at one a 2 s)
NOTABLE = 200  # events kept for the event log (status changes, checkpoints, warnings, evals, errors)
TAIL_BYTES = 4096  # bytes before ``offset`` whose hash ties a history to its events
MAX_TEXT = 2000  # characters of a text field of a kept event (an error's traceback is cut)
NOT_SERIES = frozenset({"step", "max_steps", "eta_seconds", "seconds_per_step", "time", "epoch"})
_INF = float("inf")


def _finite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


class Series:
    """One metric's (step, value) points: the newest ``RECENT`` exactly, the whole run in buckets.

    A repeated step (a resume from a checkpoint, a step redone after out-of-memory) truncates what
    followed it: exactly among the recent points and for every bucket that began at or after it; a
    coarse bucket that began before it keeps the replaced values averaged in (a small blur, in a
    bucket already many steps wide).
    """

    __slots__ = ("recent", "width", "buckets", "exact", "version")

    def __init__(self) -> None:
        self.recent: deque[tuple[int, float]] = deque(maxlen=RECENT)
        self.width = 1  # steps a bucket spans (a power of two)
        self.buckets: list[list] = []  # [index, points, sum, lo, hi, first step, finite points]
        self.exact = True  # every point is still among the recent ones
        self.version = 0  # changes with every point (for redrawing only what changed)

    def add(self, step: int, value: float) -> None:
        if self.recent and step <= self.recent[-1][0]:
            while self.recent and self.recent[-1][0] >= step:
                self.recent.pop()
            while self.buckets and self.buckets[-1][5] >= step:
                self.buckets.pop()
        if len(self.recent) == RECENT:
            self.exact = False
        self.recent.append((step, value))
        fin = _finite(value)
        b = step // self.width
        last = self.buckets[-1] if self.buckets else None
        if last is not None and last[0] == b:
            last[1] += 1
            if fin:
                last[2] += value
                last[3] = min(last[3], value)
                last[4] = max(last[4], value)
                last[6] += 1
        else:
            self.buckets.append([b, 1, value if fin else 0.0, value if fin else _INF, value if fin else -_INF,
                                 step, 1 if fin else 0])
            if len(self.buckets) > BUCKETS:
                self._coarsen()
        self.version += 1

    def _coarsen(self) -> None:
        self.width *= 2
        out: list[list] = []
        for b, n, s, lo, hi, first, fn in self.buckets:
            b //= 2
            if out and out[-1][0] == b:
                o = out[-1]
                o[1] += n
                o[2] += s
                o[3], o[4] = min(o[3], lo), max(o[4], hi)
                o[6] += fn
            else:
                out.append([b, n, s, lo, hi, first, fn])
        self.buckets = out

    def __len__(self) -> int:
        return len(self.recent) if self.exact else sum(b[1] for b in self.buckets)

    @property
    def steps(self) -> list[int]:
        """The newest points' steps."""
        return [st for st, _ in self.recent]

    @property
    def values(self) -> list[float]:
        """The newest points' values (every value while the run is short)."""
        return [v for _, v in self.recent]

    @property
    def last(self) -> float | None:
        return self.recent[-1][1] if self.recent else None

    @property
    def lo(self) -> float | None:
        vals = [v for _, v in self.recent if _finite(v)] if self.exact else \
            [b[3] for b in self.buckets if b[6]]
        return min(vals) if vals else None

    @property
    def hi(self) -> float | None:
        vals = [v for _, v in self.recent if _finite(v)] if self.exact else \
            [b[4] for b in self.buckets if b[6]]
        return max(vals) if vals else None

    def downsample(self, width: int) -> list[float]:
        """At most ``width`` points over the whole run: bucket means, so a 1,000,000-step curve fits a
        60-column chart (NaN where a column holds no finite value: a gap)."""
        if self.exact:
            vals = self.values
            if width <= 0 or len(vals) <= width:
                return vals
            out = []
            for i in range(width):
                a, b = i * len(vals) // width, (i + 1) * len(vals) // width
                chunk = vals[a:max(b, a + 1)]
                out.append(sum(chunk) / len(chunk))
            return out
        parts = [(b[2], b[6]) for b in self.buckets]
        if width <= 0 or len(parts) <= width:
            return [s / fn if fn else math.nan for s, fn in parts]
        out = []
        for i in range(width):
            a, b = i * len(parts) // width, (i + 1) * len(parts) // width
            chunk = parts[a:max(b, a + 1)]
            s, fn = sum(c[0] for c in chunk), sum(c[1] for c in chunk)
            out.append(s / fn if fn else math.nan)
        return out

    def to_json(self) -> dict:
        return {"w": self.width, "x": self.exact, "r": [list(p) for p in self.recent], "b": self.buckets,
                "v": self.version}

    @classmethod
    def from_json(cls, d: dict) -> Series:
        """From ``to_json``'s output (the file's hash has vouched for the values' types)."""
        s = cls()
        s.width, s.exact, s.version = _int(d["w"]), bool(d["x"]), _int(d["v"])
        s.recent.extend(map(tuple, d["r"]))
        s.buckets = d["b"]
        if not (isinstance(s.buckets, list) and all(len(b) == 7 for b in s.buckets)
                and all(len(p) == 2 for p in s.recent)):
            raise ValueError("a series of another shape")
        return s


class SeriesTable(dict):
    """Metric name -> Series; a name not seen yet reads as an empty series (not stored)."""

    def __missing__(self, key: str) -> Series:
        return Series()

    def get_or_add(self, key: str) -> Series:
        s = dict.get(self, key)
        if s is None:
            s = self[key] = Series()
        return s


class Digest:
    """What a session's events add up to (see the module's docstring). ``feed`` takes events as
    ``EventTail.read`` returns them, in any batch size; the result does not depend on the batching."""

    def __init__(self) -> None:
        self.status = "?"
        self.step: int | None = None
        self.max_steps: int | None = None
        self.unit = "step"  # what a step counts: an eval's items, a pairs run's MiB
        self.phase: dict | None = None  # the last `progress` record of a pass before the first step, until a step
        self.eta_seconds: float | None = None
        self.seconds_per_step: float | None = None
        self.series = SeriesTable()
        self.system: dict | None = None
        self.ranks: dict[int, dict] = {}  # latest system record of each rank (multi-process)
        self.gpu_mem: dict[int, deque] = {}
        self.gpu_util: dict[int, deque] = {}
        self.gpu_temp: dict[int, deque] = {}
        self.gpu_power: dict[int, deque] = {}
        self.cpu: deque = deque(maxlen=SAMPLES)
        self.ram: deque = deque(maxlen=SAMPLES)
        self.notable: deque = deque(maxlen=NOTABLE)  # the events the log shows, as written
        self.notable_count = 0  # notable events ever seen (the log redraws when it moves)
        self.system_count = 0  # system records seen (the panels redraw when it moves)
        self.last_event_time: float | None = None
        self.error: str | None = None
        self.events_seen = 0
        self.corrupt_lines = 0

    def feed(self, records: list[dict]) -> None:
        for rec in records:
            self.events_seen += 1
            kind = rec.get("type")
            t = rec.get("time")
            if isinstance(t, (int, float)):
                self.last_event_time = t
            if kind == L.PROGRESS and rec.get("prestep") and rec.get("phase"):  # a pass before the first step
                if not self.phase or self.phase.get("phase") != rec["phase"]:
                    self._note(rec)
                self.phase = rec
            elif kind in (L.METRICS, L.PROGRESS):
                self.phase = None
                self._metrics(rec)
            elif kind == L.EVAL:
                if isinstance(rec.get("eval_loss"), (int, float)) and isinstance(rec.get("step", 0), int):
                    self.series.get_or_add("eval_loss").add(rec.get("step", 0), float(rec["eval_loss"]))
                self._note(rec)
            elif kind == L.SYSTEM:
                self._system(rec)
            elif kind == L.STATUS:
                if isinstance(rec.get("status"), str):
                    self.status = rec["status"]
                self._note(rec)
            elif kind == L.EVENT:
                if rec.get("kind") == L.ERROR:
                    self.error = rec.get("message")
                self._note(rec)
            elif kind == "corrupt":
                self.corrupt_lines += 1
                self._note(rec)

    def _note(self, rec: dict) -> None:
        self.notable.append({k: (v[:MAX_TEXT] if isinstance(v, str) else v) for k, v in rec.items()})
        self.notable_count += 1

    def _metrics(self, rec: dict) -> None:
        step = rec.get("step")
        if isinstance(step, int):
            self.step = step
        if rec.get("max_steps"):
            self.max_steps = rec["max_steps"]
        if isinstance(rec.get("unit"), str):
            self.unit = rec["unit"]
        if rec.get("eta_seconds") is not None:
            self.eta_seconds = rec["eta_seconds"]
        if rec.get("seconds_per_step"):
            self.seconds_per_step = rec["seconds_per_step"]
        if not isinstance(step, int):
            return
        for key, value in rec.items():  # every metric the run logs, the stage's own included
            if key not in NOT_SERIES and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.series.get_or_add(key).add(step, float(value))

    def _system(self, rec: dict) -> None:
        rank = rec.get("rank")
        if isinstance(rank, int):
            self.ranks[rank] = rec
            if rank != 0:  # host and GPU histories come from rank 0 (every rank sees the same machine)
                return
        self.system = rec
        self.system_count += 1
        for g in rec.get("gpus") or []:
            i = g.get("index", 0)
            for store, key in ((self.gpu_mem, "mem_used"), (self.gpu_util, "util"), (self.gpu_temp, "temp_c"),
                               (self.gpu_power, "power_w")):
                if g.get(key) is not None:
                    store.setdefault(i, deque(maxlen=SAMPLES)).append(float(g[key]))
        host = rec.get("host") or {}
        if host.get("cpu_percent") is not None:
            self.cpu.append(float(host["cpu_percent"]))
        if host.get("ram_used") is not None:
            self.ram.append(float(host["ram_used"]))

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.max_steps:
            return None
        return min(1.0, self.step / self.max_steps)

    # ------------------------------------------------------------------ the file's second line

    _PLAIN = ("status", "step", "max_steps", "unit", "phase", "eta_seconds", "seconds_per_step", "system",
              "last_event_time", "error", "events_seen", "corrupt_lines", "notable_count", "system_count")
    _GPUS = ("gpu_mem", "gpu_util", "gpu_temp", "gpu_power")

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self._PLAIN}
        out["series"] = {k: s.to_json() for k, s in self.series.items()}
        out["ranks"] = {str(r): rec for r, rec in self.ranks.items()}
        for k in self._GPUS:
            out[k] = {str(i): list(d) for i, d in getattr(self, k).items()}
        out["cpu"], out["ram"], out["notable"] = list(self.cpu), list(self.ram), list(self.notable)
        return out

    def load_json(self, d: dict) -> None:
        """Take the state a ``to_json`` wrote (raises KeyError, TypeError or ValueError on anything else)."""
        if not isinstance(d, dict):
            raise TypeError("not an object")
        for k in self._PLAIN:
            setattr(self, k, d[k])
        for k, want in (("status", str), ("events_seen", int), ("corrupt_lines", int), ("notable_count", int),
                        ("system_count", int), ("unit", str)):
            if not isinstance(getattr(self, k), want):
                raise TypeError(f"{k} is {type(getattr(self, k)).__name__}")
        for k in ("phase", "system"):
            if getattr(self, k) is not None and not isinstance(getattr(self, k), dict):
                raise TypeError(f"{k} is not an object")
        self.series = SeriesTable((str(k), Series.from_json(v)) for k, v in d["series"].items())
        self.ranks = {int(r): rec for r, rec in d["ranks"].items() if isinstance(rec, dict)}
        for k in self._GPUS:
            setattr(self, k, {int(i): deque(map(float, v), maxlen=SAMPLES) for i, v in d[k].items()})
        self.cpu = deque(map(float, d["cpu"]), maxlen=SAMPLES)
        self.ram = deque(map(float, d["ram"]), maxlen=SAMPLES)
        self.notable = deque((r for r in d["notable"] if isinstance(r, dict)), maxlen=NOTABLE)


def _int(v, default=None) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if default is not None and v is None:
        return default
    raise TypeError(f"{v!r} is not an integer")


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --------------------------------------------------------------------------- the file

def tail_hash(events: Path, offset: int) -> str:
    """A hash of the (up to ``TAIL_BYTES``) bytes of ``events`` before ``offset``."""
    with open(events, "rb") as f:
        start = max(0, offset - TAIL_BYTES)
        f.seek(start)
        data = f.read(offset - start)
    if len(data) != offset - start:
        return ""
    return _hash(data)


def read_header(session: Path, current_only: bool = True) -> dict | None:
    """The history's first line, if it describes the events file as it is now (same size, same
    modification time): what a listing needs without reading the events. Else None.
    ``current_only=False``: the header of this version's file, however far behind."""
    try:
        with open(Path(session) / L.HISTORY, "rb") as f:
            line = f.readline(8192)
        head = json.loads(line)
        st = os.stat(Path(session) / L.EVENTS)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != VERSION:
        return None
    if not isinstance(head.get("offset"), int):
        return None
    if current_only and (head["offset"] != st.st_size or head.get("mtime_ns") != st.st_mtime_ns):
        return None
    return head


class History:
    """A digest tied to the bytes of a session's events it covers. ``catch_up`` reads only the
    bytes written since; ``save`` writes ``history.json`` atomically (a cache: errors are the
    caller's to ignore)."""

    def __init__(self, session: str | os.PathLike, digest: Digest | None = None) -> None:
        from engine.session import EventTail

        self.session = Path(session)
        self.digest = digest if digest is not None else Digest()
        self.tail = EventTail(self.session / L.EVENTS)
        self.mtime_ns = 0
        self.why = "missing"  # how load found the file: current, behind, missing, or why it was rebuilt

    @classmethod
    def load(cls, session: str | os.PathLike, digest_type: type[Digest] = Digest) -> History:
        """The saved history where the events agree with it (``why``: ``current`` or ``behind``),
        else an empty one that reads the events from the start (``why`` says what was wrong)."""
        from engine.session import EventTail

        session = Path(session)
        hist = cls(session, digest_type())
        try:
            raw = (session / L.HISTORY).read_bytes()
        except FileNotFoundError:
            return hist
        except OSError as e:
            hist.why = f"unreadable ({e.strerror})"
            return hist
        try:
            first, _, body = raw.partition(b"\n")
            head = json.loads(first)
            if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != VERSION:
                hist.why = "written by another version"
                return hist
            offset, lines = _int(head["offset"]), _int(head["lines"])
            try:
                size = os.stat(session / L.EVENTS).st_size
            except FileNotFoundError:
                size = 0
            if offset > size or (offset and tail_hash(session / L.EVENTS, offset) != head.get("tail")):
                hist.why = "stale: events.jsonl is not the file it was built from"
                return hist
            body = body.rstrip(b"\n")
            if _hash(body) != head.get("body"):  # cut short, edited, or damaged on disk
                hist.why = "damaged (its content does not match its hash)"
                return hist
            digest = digest_type()
            digest.load_json(json.loads(body))
        except FileNotFoundError:
            hist.why = "stale: events.jsonl is gone"
            return hist
        except (ValueError, KeyError, TypeError, IndexError, RecursionError, OverflowError) as e:
            hist.why = f"damaged ({type(e).__name__})"
            return hist
        hist.digest = digest
        hist.tail = EventTail(session / L.EVENTS, offset=offset, line_no=lines)
        hist.mtime_ns = _int(head.get("mtime_ns"), 0)
        hist.why = "current" if size == offset else "behind"
        return hist

    def behind(self) -> int:
        """Bytes of events written since the digest (0 when current)."""
        try:
            return max(0, os.stat(self.tail.path).st_size - self.tail.offset)
        except OSError:
            return 0

    def catch_up(self, max_bytes: int | None = None, budget_s: float | None = None) -> bool:
        """Read the events written since; True when it reached the end. ``max_bytes`` / ``budget_s``
        bound one call (the rest is read by the next)."""
        start, read0 = time.monotonic(), self.tail.bytes_read
        while True:
            try:
                self.mtime_ns = os.stat(self.tail.path).st_mtime_ns
            except OSError:
                pass
            resets = self.tail.resets
            batch = self.tail.read()
            if self.tail.resets != resets:  # the file was replaced or shrank: start again
                self.digest = type(self.digest)()
            if not batch and self.tail._at_end():
                return True
            self.digest.feed(batch)
            if max_bytes is not None and self.tail.bytes_read - read0 >= max_bytes:
                return self.tail._at_end()
            if budget_s is not None and time.monotonic() - start >= budget_s:
                return self.tail._at_end()

    def header(self) -> dict:
        offset = self.tail.offset
        d = self.digest
        return {"format": FORMAT, "version": VERSION, "offset": offset, "lines": self.tail.line_no,
                "mtime_ns": self.mtime_ns if offset == self.tail._pos else 0,
                "tail": tail_hash(self.tail.path, offset) if offset else "",
                "status": d.status, "step": d.step, "max_steps": d.max_steps, "unit": d.unit,
                "last_event_time": d.last_event_time, "events": d.events_seen, "saved": round(time.time(), 3)}

    def save(self, mode: int = 0o600) -> None:
        """Write ``history.json`` atomically (no fsync: it is rebuilt if lost)."""
        body = json.dumps(self.digest.to_json(), separators=(",", ":")).encode("utf-8")
        data = json.dumps({**self.header(), "body": _hash(body)}).encode("utf-8") + b"\n" + body + b"\n"
        path = self.session / L.HISTORY
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
