from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from engine.errors import FormatVersionError, SessionLockedError, UserError
from engine.session import (
    EVENTS,
    SESSION_JSON,
    EventTail,
    SessionWriter,
    WriterLock,
    list_sessions,
    read_session,
    read_session_json,
    sessions_root,
    write_json_atomic,
)

# --------------------------------------------------------------------------- atomic session.json


def test_crash_between_write_and_rename_leaves_the_old_file(tmp_path):
    """The process dies after the temp file is written, before os.replace."""
    w = SessionWriter.create(tmp_path, "train", name="crash")
    before = (w.path / SESSION_JSON).read_bytes()
    code = (
        "import os, engine.session as s\n"
        "os.replace = lambda *a: os._exit(9)\n"
        f"s.write_json_atomic(__import__('pathlib').Path({str(w.path / SESSION_JSON)!r}), {{'format': 1, 'new': 1}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == 9
    assert (w.path / SESSION_JSON).read_bytes() == before
    assert read_session_json(w.path)["id"] == w.id


def test_kill_during_rewrites_never_leaves_a_half_file(tmp_path):
    """SIGKILL at arbitrary moments while session.json is rewritten in a loop."""
    path = tmp_path / SESSION_JSON
    write_json_atomic(path, {"format": 1, "n": -1})
    code = (
        "import pathlib, engine.session as s\n"
        f"p = pathlib.Path({str(path)!r})\n"
        "i = 0\n"
        "while True:\n"
        "    s.write_json_atomic(p, {'format': 1, 'n': i, 'pad': 'x' * 200_000}); i += 1\n"
    )
    for delay in (0.3, 0.45, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = json.loads(path.read_text())  # must parse: old or new, never half
        assert data["format"] == 1 and isinstance(data["n"], int)


# --------------------------------------------------------------------------- tail reader


def test_tail_sees_every_event_exactly_once_while_a_writer_appends(tmp_path):
    w = SessionWriter.create(tmp_path, "train", name="tail")
    total = 50_000
    done = threading.Event()

    def write():
        for i in range(total):
            w.event("metrics", step=i, loss=1.0 / (i + 1))
        done.set()

    tail = EventTail(w.path / EVENTS, max_bytes=64 * 1024)  # small reads: many partial lines
    thread = threading.Thread(target=write)
    thread.start()
    seen: list[int] = []
    while True:
        finished = done.is_set()
        batch = tail.read()
        assert all(r["type"] == "metrics" for r in batch), batch[:3]
        seen.extend(r["step"] for r in batch)
        if finished and not batch:
            break
    thread.join()
    assert seen == list(range(total))
    assert tail.line_no == total


def test_half_written_line_is_returned_only_once_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []  # not there yet
    with open(path, "ab", buffering=0) as f:
        f.write(b'{"type": "a"}\n{"type": "b", "x": ')
        assert [r["type"] for r in tail.read()] == ["a"]
        assert tail.read() == []
        f.write(b"2}")
        assert tail.read() == []  # still no newline
        f.write(b"\n")
        assert tail.read() == [{"type": "b", "x": 2}]
        assert tail.read() == []


def test_tail_reads_only_new_bytes(tmp_path):
    """Cheap on a big file: after catching up, a call costs a stat and the new bytes only."""
    path = tmp_path / "events.jsonl"
    line = json.dumps({"type": "metrics", "pad": "x" * 1000}).encode() + b"\n"
    with open(path, "wb") as f:
        for _ in range(20_000):  # ~20 MB
            f.write(line)
    tail = EventTail(path)
    n = sum(len(tail.read()) for _ in range(10))
    assert n == 20_000 and tail.bytes_read == path.stat().st_size
    before = tail.bytes_read
    assert tail.read() == [] and tail.bytes_read == before  # nothing new: nothing read
    with open(path, "ab") as f:
        f.write(b'{"type": "status", "status": "finished"}\n')
    assert tail.read() == [{"type": "status", "status": "finished"}]
    assert tail.bytes_read - before == len(b'{"type": "status", "status": "finished"}\n')


def test_tail_reports_corrupt_lines_and_survives_truncation(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type": "a"}\nnot json\n[1, 2]\n{"type": "b"}\n')
    tail = EventTail(path)
    recs = tail.read()
    assert [r["type"] for r in recs] == ["a", "corrupt", "corrupt", "b"]
    assert recs[1]["line"] == 2 and recs[2]["line"] == 3
    path.write_bytes(b'{"type": "fresh"}\n')  # replaced by a shorter file
    assert tail.read() == [{"type": "fresh"}]
    assert tail.resets == 1


def test_tail_skips_a_line_longer_than_one_read(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type": "a"}\n' + b"x" * 5000 + b'\n{"type": "b"}\n')
    tail = EventTail(path, max_bytes=1024)
    got = []
    for _ in range(20):
        got.extend(tail.read())
    assert [r["type"] for r in got] == ["a", "b"]
    assert tail.skipped_long_lines == 1


# --------------------------------------------------------------------------- session store


def test_ids_are_unique_when_many_start_in_the_same_second(tmp_path):
    ids: list[str] = []
    lock = threading.Lock()

    def make():
        w = SessionWriter.create(tmp_path, "eval", name="same")
        with lock:
            ids.append(w.id)

    threads = [threading.Thread(target=make) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 20
    assert all("-eval-same" in i for i in ids)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 20


def test_session_files_are_private_by_default_and_shared_on_request(tmp_path):
    old = os.umask(0)
    try:
        w = SessionWriter.create(tmp_path, "train", name="priv")
        w.event("metrics", step=1)
        s = SessionWriter.create(tmp_path, "train", name="shared", shared=True)
        s.event("metrics", step=1)
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(w.path) == 0o700
    assert mode(w.path / SESSION_JSON) == 0o600 and mode(w.path / EVENTS) == 0o600
    assert mode(s.path) == 0o750
    assert mode(s.path / SESSION_JSON) == 0o640 and mode(s.path / EVENTS) == 0o640


@pytest.mark.parametrize("bad", ["../escape", "a/b", "/abs", "..", ".hidden", "", "x" * 65, "a..b"])
def test_names_that_could_leave_the_root_are_rejected(tmp_path, bad):
    root = tmp_path / "sessions"
    with pytest.raises(UserError) as e:
        SessionWriter.create(root, "train", name=bad)
    assert e.value.field == "--name"
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["sessions"])
    assert not root.exists() or list(root.iterdir()) == []


def test_newer_format_is_refused_with_a_clear_message(tmp_path):
    w = SessionWriter.create(tmp_path, "train", name="future")
    meta = json.loads((w.path / SESSION_JSON).read_text())
    meta["format"] = 2
    (w.path / SESSION_JSON).write_text(json.dumps(meta))
    with pytest.raises(FormatVersionError) as e:
        read_session_json(w.path)
    assert "format 2 is newer" in str(e.value) and e.value.field == "format"
    assert str(w.path / SESSION_JSON) in str(e.value)
    listed = list_sessions(tmp_path)
    assert listed[0].status == "unreadable" and "newer" in listed[0].error


def test_damaged_session_json_is_listed_not_fatal(tmp_path):
    good = SessionWriter.create(tmp_path, "eval", name="good")
    bad = SessionWriter.create(tmp_path, "eval", name="bad")
    (bad.path / SESSION_JSON).write_text("{ half")
    by_id = {i.id: i for i in list_sessions(tmp_path)}
    assert by_id[good.id].status == "planned"
    assert by_id[bad.id].status == "unreadable" and "not valid JSON" in by_id[bad.id].error


def test_list_is_newest_first_with_progress_and_status(tmp_path):
    a = SessionWriter.create(tmp_path, "train", name="first", stage="sft")
    a.set_status("running")
    a.event("metrics", step=25, max_steps=100, loss=1.2)
    a.set_status("finished")
    time.sleep(1.1)  # created timestamps have one-second resolution
    b = SessionWriter.create(tmp_path, "eval", name="second")
    b.event("progress", step=3, max_steps=10)
    infos = list_sessions(tmp_path)
    assert [i.id for i in infos] == [b.id, a.id]
    assert infos[1].status == "finished" and infos[1].progress == 0.25 and infos[1].stage == "sft"
    assert infos[1].meta["started"] and infos[1].meta["ended"]
    assert infos[0].progress == pytest.approx(0.3)
    assert list_sessions(tmp_path / "missing") == []


def test_running_session_whose_process_died_is_lost(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    w = SessionWriter.create(tmp_path, "train", name="ghost")
    w.set_status("running")
    assert read_session(w.path).effective_status == "running"  # we are alive
    w.update(pid=dead_pid)
    assert read_session(w.path).effective_status == "lost"


def test_status_changes_are_events_too(tmp_path):
    w = SessionWriter.create(tmp_path, "train", name="st")
    w.set_status("running")
    w.set_status("failed", error="CUDA out of memory")
    events = EventTail(w.path / EVENTS).read()
    assert [(e["type"], e["status"]) for e in events] == [("status", "running"), ("status", "failed")]
    assert read_session_json(w.path)["error"] == "CUDA out of memory"
    with pytest.raises(ValueError):
        w.set_status("exploded")


def test_sessions_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("ROUNDS_SESSIONS", raising=False)
    monkeypatch.chdir(ROOT / "engine")  # inside the checkout: its own sessions/ (marked), from any folder below
    assert sessions_root() == ROOT / "sessions"
    monkeypatch.setenv("ROUNDS_SESSIONS", str(tmp_path / "env"))
    assert sessions_root() == tmp_path / "env"
    assert sessions_root(tmp_path / "cli") == tmp_path / "cli"


# --------------------------------------------------------------------------- writer lock


def test_second_lock_holder_gets_a_clear_error(tmp_path):
    target = tmp_path / "assessments.jsonl"
    code = (
        "import sys, time, pathlib, engine.session as s\n"
        f"lock = s.WriterLock(pathlib.Path({str(target)!r}), 'alice').acquire()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SessionLockedError) as e:
            WriterLock(target, "alice").acquire()
        assert f"pid {holder.pid}" in str(e.value) and "alice" in str(e.value)
        assert e.value.hint
        with WriterLock(target, "bob"):  # another annotator is fine
            pass
    finally:
        holder.stdin.close()
        holder.wait()
    with WriterLock(target, "alice"):  # the kernel released the dead holder's lock
        with pytest.raises(SessionLockedError):
            WriterLock(target, "alice").acquire()  # and it excludes within one process too


# ---------------------------------------------------------------------------- where the sessions root is

def test_the_sessions_root_is_found_from_any_folder_below_it_and_is_absolute(tmp_path, monkeypatch):
    from engine.session import ROOT_MARK, find_sessions_root

    monkeypatch.delenv("ROUNDS_SESSIONS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "project"
    deep = project / "scripts" / "stage_b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    root, why = find_sessions_root()
    assert root == tmp_path / "xdg" / "rounds" / "sessions" and "per-user default" in why  # nothing here or above
    SessionWriter.create(project / "sessions", "train", name="first")  # made where the user asked
    assert not (project / "sessions" / ROOT_MARK).exists()
    assert find_sessions_root()[0] == tmp_path / "xdg" / "rounds" / "sessions"  # unmarked: not from below
    (project / "sessions" / ROOT_MARK).write_text("")  # as a clone's own sessions/ is
    root, why = find_sessions_root()
    assert root == project / "sessions" and root.is_absolute() and "nearest" in why
    monkeypatch.chdir(project)
    assert find_sessions_root() == (project / "sessions", "./sessions")
    monkeypatch.setenv("ROUNDS_SESSIONS", "elsewhere")  # the variable, then the flag, win
    assert find_sessions_root() == (project / "elsewhere", "$ROUNDS_SESSIONS")
    assert find_sessions_root("flag")[0] == project / "flag"


def test_a_plain_folder_called_sessions_is_not_taken_for_a_root(tmp_path, monkeypatch):
    from engine.session import ROOT_MARK, find_sessions_root

    monkeypatch.delenv("ROUNDS_SESSIONS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    w = SessionWriter.create(tmp_path / "sessions", "train", name="old")
    monkeypatch.chdir(tmp_path)
    assert find_sessions_root()[0] == w.path.parent  # ./sessions with sessions in it: as before
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # a stray sessions/ above (say in /tmp) does not capture this
    assert find_sessions_root()[0] == tmp_path / "xdg" / "rounds" / "sessions"
    (tmp_path / "other" / "sessions").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "other")
    assert find_sessions_root()[0] == tmp_path / "xdg" / "rounds" / "sessions"  # empty, unmarked: not a root
    (tmp_path / "other" / "sessions" / ROOT_MARK).write_text("")
    assert find_sessions_root()[0] == tmp_path / "other" / "sessions"  # marked, like a clone's own


def test_a_sessions_folder_this_user_cannot_read_is_passed_over_without_an_error(tmp_path, monkeypatch):
    from engine.session import _is_sessions_root

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    (tmp_path / "sessions").mkdir()
    monkeypatch.setattr(Path, "is_file", denied)
    monkeypatch.setattr(Path, "iterdir", denied)
    assert _is_sessions_root(tmp_path / "sessions") is False


def test_rounds_from_another_folder_names_the_root_absolutely_and_how_it_was_chosen(tmp_path):
    from conftest import run_rounds

    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "ROUNDS_SESSIONS": ""}
    r = run_rounds("watch", cwd=tmp_path, env=env)
    assert r.returncode != 0
    assert f"no sessions in {tmp_path / 'xdg' / 'rounds' / 'sessions'} (the per-user default" in r.stderr, r.stderr
    assert "--sessions DIR or $ROUNDS_SESSIONS" in r.stderr
