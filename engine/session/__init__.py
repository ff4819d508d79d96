"""The session folder: the only contract between a run and the console.

A run *writes* (``SessionWriter``): ``session.json`` replaced atomically, events
appended to ``events.jsonl`` one JSON object a line. The console *reads*
(``read_session``, ``list_sessions``, ``EventTail``) and never needs the run to be
alive. The package's modules: ``layout`` (every file and event kind, by name),
``requests`` (stop / checkpoint requests to a running run); docs/ARCHITECTURE.md
describes the folder for people.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import FormatVersionError, SessionLockedError, UserError
from engine.session import layout
from engine.session.layout import EVENTS, SESSION_JSON
from engine.units import finite

FORMAT = 1
KINDS = ("train", "eval", "assess", "pairs")
STATUSES = ("planned", "running", "finished", "failed", "stopped")

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
SHARED_DIR, SHARED_FILE = 0o750, 0o640

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# --------------------------------------------------------------------------- paths

ROOT_MARK = ".rounds-sessions"  # a sessions root before it holds a session (the checkout's own sessions/)


def _is_sessions_root(folder: Path, marked_only: bool = False) -> bool:
    """A ``sessions`` folder of rounds': one that carries the mark (a checkout's own), or, unless
    ``marked_only``, one that holds a session (``./sessions``, the old default). Never an error:
    a folder this user cannot read is not theirs."""
    try:
        if not folder.is_dir():
            return False
        if (folder / ROOT_MARK).is_file():
            return True
        if marked_only:
            return False
        for n, child in enumerate(folder.iterdir()):
            if (child / SESSION_JSON).is_file():
                return True
            if n > 200:
                break
    except OSError:
        return False
    return False


def user_sessions_root() -> Path:
    """The per-user default: ``$XDG_DATA_HOME/rounds/sessions`` (``~/.local/share/rounds/sessions``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "rounds" / "sessions"


def find_sessions_root(cli_value: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The sessions root and why it is that one: ``--sessions DIR`` wins, then
    ``$ROUNDS_SESSIONS``, then ``./sessions`` when it holds sessions, then the nearest marked
    ``sessions/`` above (a checkout's own), then the per-user default. Always absolute."""
    if cli_value:
        root, why = Path(cli_value).expanduser(), "--sessions"
    elif os.environ.get("ROUNDS_SESSIONS"):
        root, why = Path(os.environ["ROUNDS_SESSIONS"]).expanduser(), "$ROUNDS_SESSIONS"
    else:
        here = Path.cwd()
        # ./sessions as before; above, only a marked one (a checkout's own), so that a stray sessions/
        # in /tmp or a teammate's folder never captures everything below it
        found = next((d / "sessions" for d in (here, *here.parents)
                      if _is_sessions_root(d / "sessions", marked_only=d != here)), None)
        if found is not None:
            root, why = found, ("./sessions" if found.parent == here else "the nearest sessions folder above")
        else:
            root, why = user_sessions_root(), "the per-user default (no sessions folder here or above)"
    root = Path(os.path.abspath(root))
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is a file, not a folder of sessions", field="--sessions",
                        hint="give a folder (made if missing), or unset $ROUNDS_SESSIONS")
    return root, why


def sessions_root(cli_value: str | os.PathLike | None = None) -> Path:
    """The sessions root, absolute (see ``find_sessions_root``)."""
    return find_sessions_root(cli_value)[0]


def check_name(name: str) -> str:
    """A session name becomes part of a folder name: refuse anything that could leave the root."""
    if not _NAME_RE.match(name) or ".." in name:
        raise UserError(
            f"session name {name!r} is not allowed",
            field="--name",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                 "(no '/' and no '..')",
        )
    return name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "run"


def file_mode(session_dir: Path) -> int:
    """Files follow their folder: a shared (group-readable) folder gets group-readable files."""
    try:
        return SHARED_FILE if os.stat(session_dir).st_mode & 0o070 else PRIVATE_FILE
    except OSError:
        return PRIVATE_FILE


def open_append(path: str | os.PathLike, mode: int) -> int:
    """A JSONL file opened for appending, the one way the project appends lines (events, results,
    marks): a partial last line left by a crash or a full disk is ended first, so the next line is
    not glued onto it and lost with it (readers report the cut line once, by number)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
    except OSError:
        os.close(fd)
        raise
    return fd


def append_lines(path: str | os.PathLike, data: bytes, mode: int, sync: bool = True) -> None:
    """Append whole lines in one write (fsynced where durability is promised) through ``open_append``."""
    fd = open_append(path, mode)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def follow_folder_mode(session_dir: Path) -> None:
    """For a process that writes a session: everything it (and the libraries it calls: checkpoints,
    adapters, tokenizers) creates gets the folder's privacy, 0700/0600, or 0750/0640 when shared."""
    os.umask(0o027 if file_mode(session_dir) == SHARED_FILE else 0o077)


# --------------------------------------------------------------------------- atomic writes

def write_json_atomic(path: Path, obj: Any, mode: int = PRIVATE_FILE) -> None:
    """Write ``obj`` to a temporary file in the same folder, fsync it, then rename it over
    ``path``: a reader sees the old file or the new one, never an empty or half one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- writer

class SessionWriter:
    """Creates and writes one session folder. Used by the process that does the work."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self._mode = file_mode(self.path)
        self._events = None
        self._lock = threading.Lock()  # the run's main thread and its sampler thread both append
        self._history = None  # engine.session.history.History, kept near the events (a cache for readers)
        self._history_at = 0.0
        self._history_lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.meta["id"]

    @classmethod
    def create(cls, root: str | os.PathLike, kind: str, *, name: str | None = None, stage: str | None = None,
               command: list[str] | None = None, config: dict | None = None, shared: bool = False,
               status: str = "planned") -> SessionWriter:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if name is not None:
            check_name(name)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        dir_mode = SHARED_DIR if shared else PRIVATE_DIR
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{kind}-{_slug(name or stage or kind)}"
        # mkdir is atomic: whoever creates the folder owns the id; the others try the next suffix.
        for n in range(1, 10_000):
            sid = base if n == 1 else f"{base}-{n}"
            path = root / sid
            try:
                os.mkdir(path, dir_mode)
            except FileExistsError:
                continue
            os.chmod(path, dir_mode)  # mkdir's mode is filtered by the umask
            break
        else:  # pragma: no cover - ten thousand sessions in one second
            raise UserError(f"{root}: could not find a free session id for {base}")
        meta = {
            "format": FORMAT,
            "id": sid,
            "name": name or sid,
            "kind": kind,
            "stage": stage,
            "status": status,
            "command": command if command is not None else list(sys.argv),
            "config": config or {},
            "plan": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "shared": shared,
            "created": _now_iso(),
            "started": None,
            "ended": None,
        }
        writer = cls(path, meta)
        writer._write_meta()
        return writer

    @classmethod
    def reopen(cls, path: str | os.PathLike) -> SessionWriter:
        """Continue writing an existing session (resume, a later eval pass)."""
        path = Path(path)
        return cls(path, read_session_json(path))

    def _write_meta(self) -> None:
        write_json_atomic(self.path / SESSION_JSON, self.meta, self._mode)

    def update(self, **fields: Any) -> None:
        self.meta.update(fields)
        self._write_meta()

    def event(self, type: str, *, sync: bool = False, **fields: Any) -> dict:
        """Append one event line and flush it; ``sync`` also fsyncs (status changes)."""
        record = {"time": round(time.time(), 3), "type": type, **fields}
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._events is None:
                self._events = os.fdopen(open_append(self.path / EVENTS, self._mode), "ab", buffering=0)
            # One write() of the whole line: readers see it complete or as a tail they skip.
            self._events.write(line)
            if sync:
                os.fsync(self._events.fileno())
        self._history_tick()
        return record

    def _history_tick(self, force: bool = False) -> None:
        """Keep ``history.json`` near the events: every ``HISTORY_EVERY`` seconds and when the run ends
        (``force``). It reads only the events written since its last save (a resumed session's saved
        history is continued), at most a few MiB a call, and a failure to write it is never the
        run's: readers rebuild it."""
        now = time.monotonic()
        if not force and now - self._history_at < HISTORY_EVERY:  # the hot path: one comparison an event
            return
        from engine.session.history import History, read_header

        if not self._history_lock.acquire(blocking=force):
            return  # another thread of this run is saving it
        try:
            self._history_at = now
            hist = self._history
            if hist is None:
                hist = History.load(self.path)
            else:  # a reader that rebuilt it may have saved one further on: continue from there
                head = read_header(self.path, current_only=False)
                if head and head["offset"] > hist.tail.offset:
                    newer = History.load(self.path)
                    if newer.why in ("current", "behind"):
                        hist = newer
            self._history = hist
            hist.catch_up(max_bytes=(8 if force else 2) * 2**20)
            hist.save(self._mode)
        except Exception:  # noqa: BLE001 - a cache; the events are the record
            pass
        finally:
            self._history_lock.release()

    def set_status(self, status: str, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        now = _now_iso()
        extra: dict[str, Any] = {"status": status, "pid": os.getpid(), "host": socket.gethostname()}
        if status == "running" and not self.meta.get("started"):
            extra["started"] = now
        if status in ("finished", "failed", "stopped"):
            extra["ended"] = now
        if status in ("running", "finished"):  # a resumed run that goes on is no longer failed or stopped
            for stale in ("error", "failed_rank", "reason"):
                self.meta.pop(stale, None)
        self.event("status", status=status, sync=True, **fields)
        if status in ("finished", "failed", "stopped"):
            self._history_tick(force=True)
        self.update(**extra, **{k: v for k, v in fields.items() if k in ("error", "reason")})

    def fail(self, message: str, *, detail: str | None = None, **fields: Any) -> None:
        """Mark the session failed, the one way: an ``error`` event (``detail``: a longer text for it,
        e.g. with the hint) and status ``failed`` with the message; ``fields`` such as
        ``failed_rank`` go to both, and to session.json."""
        self.event(layout.EVENT, kind=layout.ERROR, message=detail or message, **fields)
        self.set_status("failed", error=message, **fields)
        if fields:
            self.update(**fields)

    def close(self) -> None:
        if self._events is not None:
            self._history_tick(force=True)
        with self._lock:
            if self._events is not None:
                self._events.close()
                self._events = None

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- readers

def read_session_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``session.json`` of the session folder ``path``."""
    file = Path(path) / SESSION_JSON
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{file}: not found", hint="is this a session folder? `rounds` lists the sessions") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"not valid JSON ({str(e)[:200]})", file=str(file),
                        hint="the file was edited or damaged; restore it from a backup") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format"), int):
        raise UserError("no integer 'format' field", file=str(file), field="format",
                        hint="this does not look like a rounds session file")
    if meta["format"] > FORMAT:
        raise FormatVersionError(
            f"format {meta['format']} is newer than this rounds understands (format {FORMAT})",
            file=str(file), field="format",
            hint="upgrade rounds (pip install -U rounds) to read this session; it was not changed",
        )
    check_fields(meta, file)
    return meta


@dataclass
class SessionInfo:
    path: Path
    id: str
    kind: str = "?"
    stage: str | None = None
    name: str | None = None
    status: str = "?"
    created: str | None = None
    started: str | None = None
    ended: str | None = None
    pid: int | None = None
    host: str | None = None
    step: int | None = None
    total_steps: int | None = None
    last_event_time: float | None = None
    error: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def progress(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    @property
    def effective_status(self) -> str:
        """``running`` only while the writing process lives and writes; else ``lost`` or ``stalled``."""
        return liveness(self.meta, self.last_event_time)[0] if self.meta else self.status


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


HISTORY_EVERY = 10.0  # seconds between a writer's saves of history.json (engine.session.history)
STALE_SECONDS = 120  # a running process that wrote nothing for this long is shown as stalled


def liveness(meta: dict, last_event_time: float | None, now: float | None = None) -> tuple[str, str]:
    """(status to show, detail): ``running`` only while the pid lives and events are recent;
    ``lost`` when the process is gone without writing a status; ``stalled`` when it is silent."""
    now = time.time() if now is None else now
    status = meta.get("status", "?")
    if status != "running":
        return status, ""
    if meta.get("host") == socket.gethostname() and meta.get("pid") and not pid_alive(meta["pid"]):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last_event_time)) if last_event_time else "unknown"
        return "lost", f"process {meta['pid']} is gone; last event {when}"
    if last_event_time and now - last_event_time > STALE_SECONDS:
        from engine.units import format_duration

        return "stalled", f"no event for {format_duration(now - last_event_time)}"
    return "running", ""


# what the readers of a listing rely on: field -> the types it may have (None: may be missing or null)
FIELD_TYPES = {"kind": (str,), "status": (str,), "stage": (str, None), "name": (str, None), "created": (str, None),
               "started": (str, None), "ended": (str, None), "pid": (int, None), "host": (str, None),
               "error": (str, None), "plan": (dict, None), "config": (dict, None), "world_size": (int, None),
               "stage_info": (dict, None)}


def check_fields(meta: dict, file: Path) -> None:
    """A session.json whose fields have the wrong types (edited by hand, written by something else)
    is refused with the field named, so a listing shows it as unreadable instead of breaking."""
    for name, types in FIELD_TYPES.items():
        value = meta.get(name)
        if value is None and None in types:
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, tuple(t for t in types if t)):
            allowed = " or ".join("null" if t is None else t.__name__ for t in types)
            raise UserError(f"{name!r} is {type(value).__name__ if value is not None else 'missing'}, not {allowed}",
                            file=str(file), field=name, hint="the file was edited or damaged; fix that field")


def read_session(path: str | os.PathLike) -> SessionInfo:
    """One session for a listing. Its id is its folder's name (unique in a root, whatever the file
    says: a folder copied beside its original lists twice, under two names)."""
    path = Path(path)
    meta = read_session_json(path)
    info = SessionInfo(
        path=path, id=path.name, kind=meta.get("kind", "?"), stage=meta.get("stage"),
        name=meta.get("name"), status=meta.get("status", "?"), created=meta.get("created"),
        started=meta.get("started"), ended=meta.get("ended"), pid=meta.get("pid"), host=meta.get("host"),
        error=meta.get("error"), meta=meta,
    )
    from engine.session.history import read_header

    head = read_header(path)  # the history, when it covers the events as they are: no event is read
    if head is not None:
        t, step, total = head.get("last_event_time"), head.get("step"), head.get("max_steps")
        info.last_event_time = t if finite(t) else None
        if _integer(step) and _integer(total) and total:
            info.step, info.total_steps = step, total
        return info
    for rec in reversed(last_events(path / EVENTS)):
        if info.last_event_time is None:
            info.last_event_time = rec.get("time")
        total = rec.get("max_steps")
        if "step" in rec and total and not rec.get("prestep"):  # a pass before training is not its progress
            info.step, info.total_steps = rec["step"], total
            break
    return info


def session_folders(root: str | os.PathLike) -> list[Path]:
    """The session folders under ``root``, newest first by name (an id begins with its UTC start)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((c for c in root.iterdir() if (c / SESSION_JSON).is_file()), key=lambda c: c.name, reverse=True)


def listing(folder: Path) -> SessionInfo:
    """One folder for a listing; a damaged or newer-format session is ``unreadable`` with the reason."""
    try:
        return read_session(folder)
    except UserError as e:
        return SessionInfo(path=folder, id=folder.name, status="unreadable", error=str(e))


def list_sessions(root: str | os.PathLike, folders: list[Path] | None = None) -> list[SessionInfo]:
    """Every session under ``root`` (or the given ``folders``), newest first. A damaged or newer-format
    session is listed with status ``unreadable`` and the reason, never skipped and never fatal."""
    infos = [listing(c) for c in (session_folders(root) if folders is None else folders)]
    infos.sort(key=lambda i: (i.created or "", i.id), reverse=True)
    return infos


# what the readers of events rely on: a field of another type is dropped from the record (kept: the rest)
_EVENT_NUMBERS = ("time", "eta_seconds", "seconds_per_step", "seconds")
_EVENT_INTS = ("step", "max_steps", "rank", "world_size")
_EVENT_TEXT = ("type", "kind", "status", "unit", "message", "reason", "plan", "device", "path", "checkpoint")
_EVENT_PARTS = {  # nested objects of a system record -> their numeric fields
    "host": ("ram_used", "ram_total", "cpu_percent", "cpus"),
    "process": ("pid", "rss", "rss_children", "cpu_percent", "threads"),
    "torch": ("allocated", "reserved", "peak", "device"),
}
_GPU_NUMBERS = ("index", "mem_used", "mem_total", "util", "temp_c", "power_w", "power_limit_w")


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -2**53 <= v <= 2**53


def clean_event(rec: dict) -> dict:
    """An event with every field a reader relies on of the type it expects; a field of another type
    (a hand edit, another tool's writer, a damaged line that still parses) is dropped, the rest
    kept. Metric values stay as written (a NaN loss is news); the screens skip non-numbers."""
    out = dict(rec)
    if "time" in out and not (finite(out["time"]) and 0 <= out["time"] < 2**33):  # seconds since 1970, < 2242
        del out["time"]
    for keys, ok in ((_EVENT_NUMBERS, finite), (_EVENT_INTS, _integer), (_EVENT_TEXT, is_text)):
        for k in keys:
            if k in out and not ok(out[k]):
                del out[k]
    for part, fields in _EVENT_PARTS.items():
        if part in out:
            if isinstance(out[part], dict):
                out[part] = {k: v for k, v in out[part].items() if k not in fields or finite(v)}
            else:
                del out[part]
    if "gpus" in out:
        gpus = out["gpus"] if isinstance(out["gpus"], list) else []
        out["gpus"] = [{k: v for k, v in g.items() if k not in _GPU_NUMBERS or finite(v)}
                       for g in gpus if isinstance(g, dict) and _integer(g.get("index", 0))]
    return out


def is_text(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: cannot be shown or written back
        return False
    return True


def last_events(path: Path, max_bytes: int = 64 * 1024) -> list[dict]:
    """The complete events in the last ``max_bytes`` of an events file (cheap on any size)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return []
    if start > 0:  # the first line is probably cut
        data = data[data.find(b"\n") + 1:]
    out = []
    for line in data.split(b"\n")[:-1]:  # the last piece is empty or half-written
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(rec, dict):
            out.append(clean_event(rec))
    return out


class EventTail:
    """Follows an append-only JSONL file from a byte offset.

    Each ``read()`` returns only lines that are complete (end in ``\\n``); a half-written
    last line is left for a later call. It reads at most ``max_bytes`` per call, only the
    bytes added since the last call, and costs one ``stat`` when nothing changed — cheap
    to call every second on a file of any size. A missing file reads as empty; a file
    that shrank or was replaced is read again from the start (``reset`` counts those).
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0, max_bytes: int = 8 * 1024 * 1024,
                 line_no: int = 0):
        self.path = Path(path)
        self._pos = offset  # bytes of the file read so far
        self._pending = b""  # the incomplete last line, kept so no byte is read twice
        self.line_no = line_no  # complete lines consumed so far (``line_no``: the lines before ``offset``)
        self.max_bytes = max_bytes
        self.resets = 0
        self.skipped_long_lines = 0
        self.bytes_read = 0
        self._skipping = False
        self._ino: int | None = None

    @property
    def offset(self) -> int:
        """Byte offset just past the last complete line returned."""
        return self._pos - len(self._pending)

    def read_lines(self) -> list[bytes]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self._pos:
            self._pos, self._pending, self.line_no, self._skipping = 0, b"", 0, False
            self.resets += 1
        self._ino = st.st_ino
        if st.st_size == self._pos:
            return []
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            chunk = f.read(min(self.max_bytes, st.st_size - self._pos))
        self._pos += len(chunk)
        self.bytes_read += len(chunk)
        if self._skipping:  # inside a line too long to keep: drop bytes up to its end
            nl = chunk.find(b"\n")
            if nl < 0:
                return []
            chunk = chunk[nl + 1:]
            self._skipping = False
            self.line_no += 1
            self.skipped_long_lines += 1
        data = self._pending + chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._pending = data
            if len(data) >= self.max_bytes:  # a line longer than one whole read
                self._pending, self._skipping = b"", True
            return []
        self._pending = data[end + 1:]
        lines = data[:end].split(b"\n")
        self.line_no += len(lines)
        return lines

    def read(self) -> list[dict]:
        """New complete events, parsed. A line that is not a JSON object comes back as
        ``{"type": "corrupt", "line": N, "error": ...}`` so nothing is silently lost."""
        first = self.line_no + 1
        out = []
        for i, line in enumerate(self.read_lines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                rec = clean_event(rec)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                rec = {"type": "corrupt", "line": first + i, "error": str(e)[:200] or type(e).__name__}
            out.append(rec)
        return out

    def __iter__(self) -> Iterator[dict]:
        """Everything available now, in chunks (for reading a whole history once)."""
        while True:
            batch = self.read()
            if not batch and self._at_end():
                return
            yield from batch

    def _at_end(self) -> bool:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return True
        return size == self._pos


# --------------------------------------------------------------------------- writer lock

class WriterLock:
    """An exclusive, non-blocking ``flock`` that says who holds it.

    ``WriterLock(session / "assessments.jsonl", owner="alice")`` makes sure only one
    process appends marks as annotator ``alice``. The kernel drops the lock when the
    holder dies, so a crashed console never leaves a stale lock behind.
    """

    def __init__(self, target: str | os.PathLike, owner: str, message: str | None = None,
                 hint: str = "close the other console first, or use a different --annotator"):
        self.target = Path(target)
        self.owner = owner
        self.lock_path = self.target.with_name(f".{self.target.name}.{_slug(owner)}.lock")
        self.message = message or f"{self.target.name} is already being written as {owner!r} by another process"
        self.hint = hint
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, file_mode(self.lock_path.parent))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise SessionLockedError(self.message + (f" ({holder})" if holder else ""), file=str(self.target),
                                     hint=self.hint) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now_iso()}".encode())
        self._fd = fd
        return self

    def holder(self) -> dict | None:
        """Who holds the lock now — ``{"pid", "host", "since"}`` as the holder wrote them — or None
        when nobody does (a check that takes nothing)."""
        message = self.held_by_another()
        if message is None:
            return None
        m = re.search(r"\(pid (\d+) on (\S+) since (\S+)\)$", message)
        return {"pid": int(m.group(1)), "host": m.group(2), "since": m.group(3)} if m else \
            {"pid": None, "host": None, "since": None}

    def held_by_another(self) -> str | None:
        """Who holds the lock now (pid, host, since when), or None: a check that takes nothing."""
        try:
            self.acquire()
        except SessionLockedError as e:
            return e.message
        self.release()
        return None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def run_lock(session: str | os.PathLike) -> WriterLock:
    """The lock of the one process that runs a session (a training worker or its supervisor, an
    evaluation): a second ``rounds resume`` (or ``eval --resume``) of the same session is refused
    with who holds it, instead of writing the same steps twice. The kernel drops it when the holder
    dies: a killed run leaves no stale lock."""
    session = Path(session)
    return WriterLock(session / SESSION_JSON, "run", message=f"{session.name} is already being run by another process",
                      hint="watch it (rounds watch), or stop it first; it can be resumed once it has stopped")
