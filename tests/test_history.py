"""history.json: the bounded digest of a session's events that the console opens instead of the events
(issue #19). It must equal a digest computed from the events, be rebuilt when it cannot be trusted,
be continued (never re-read) as the events grow, and let the Monitor draw before it is read."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
import time
from pathlib import Path

import pytest

import engine.session as session_mod
from console.app import RoundsApp
from console.screens.monitor import MonitorScreen
from console.widgets.chart import MetricChart
from engine.session import EventTail, SessionWriter, list_sessions
from engine.session.history import BUCKETS, RECENT, Digest, History, Series, read_header


def run_events(n: int, seed: int = 0) -> list[dict]:
    """A run's events: metrics (a resume that redoes steps, NaN), system records of two ranks with a GPU,
    a pass before the first step, checkpoints, warnings, an eval every 500 steps."""
    rng = random.Random(seed)
    out, step, t = [], 0, 1_795_000_000.0
    out.append({"time": t, "type": "status", "status": "running"})
    for i in range(40):
        out.append({"time": t, "type": "progress", "prestep": True, "phase": "reference log-probs", "step": i,
                    "max_steps": 40, "unit": "batches"})
    while len(out) < n:
        t += 1.0
        step += 1
        if step == 1200:  # resumed from checkpoint 1000: steps 1001.. again
            step = 1001
            out.append({"time": t, "type": "event", "kind": "resumed", "checkpoint": "x/checkpoint-1000"})
        loss = math.nan if step == 77 else 1.0 / step + rng.random() * 1e-3
        out.append({"time": t, "type": "metrics", "step": step, "max_steps": 100_000, "loss": loss,
                    "rewards/margins": rng.random(), "grad_norm": rng.random() * 3, "eta_seconds": 1e4,
                    "seconds_per_step": 1.0, "tokens_per_second": 1500.0 + rng.random()})
        if step % 2 == 0:
            for rank in (0, 1):
                out.append({"time": t, "type": "system", "rank": rank,
                            "gpus": [{"index": rank, "mem_used": 7e9 + rng.random() * 1e8, "mem_total": 12e9,
                                      "util": rng.randint(0, 100), "temp_c": 70, "power_w": 180.0}],
                            "host": {"cpu_percent": rng.random() * 100, "ram_used": 6e9, "ram_total": 3.2e10},
                            "process": {"rss": 3e9}})
        if step % 250 == 0:
            out.append({"time": t, "type": "event", "kind": "checkpoint", "step": step, "seconds": 2.5,
                        "reason": "every --save-steps", "path": f"checkpoint-{step}"})
        if step % 500 == 0:
            out.append({"time": t, "type": "eval", "step": step, "eval_loss": 0.5 + rng.random()})
        if step % 700 == 0:
            out.append({"time": t, "type": "event", "kind": "warning", "message": "x" * 5000})
    return out[:n]


def write_events(session: Path, events: list[dict], damaged_line: int | None = None) -> None:
    with open(session / "events.jsonl", "a") as f:
        for i, e in enumerate(events):
            f.write(("{not json\n" if i == damaged_line else "") + json.dumps(e) + "\n")


def computed(session: Path) -> dict:
    """The digest of every event, computed from the events alone (no history file involved)."""
    d = Digest()
    tail = EventTail(session / "events.jsonl")
    while True:
        batch = tail.read()
        if not batch:
            break
        d.feed(batch)
    return json.loads(json.dumps(d.to_json()))  # as saved: NaN and tuples as JSON has them


def save_history(session: Path) -> None:
    """Bring the session's history up to its events and save it, as the run's writer does."""
    hist = History.load(session)
    hist.catch_up()
    hist.save()


def loaded(session: Path) -> tuple[History, dict]:
    hist = History.load(session)
    why = hist.why
    hist.catch_up()
    hist.why = why
    return hist, json.loads(json.dumps(hist.digest.to_json()))


@pytest.fixture
def session(tmp_path) -> Path:
    w = SessionWriter.create(tmp_path, "train", name="night", stage="dpo")
    w.close()
    return w.path


def test_series_keeps_the_newest_points_exactly_and_the_whole_run_in_bounded_buckets():
    s = Series()
    for i in range(1, 11):
        s.add(i, float(i))
    s.add(8, 80.0)  # resumed from checkpoint 7: step 8 done again
    assert s.steps == [1, 2, 3, 4, 5, 6, 7, 8] and s.last == 80.0 and s.exact
    big = Series()
    for i in range(100_000):
        big.add(i, float(i % 10))
    assert not big.exact and len(big.buckets) <= BUCKETS and len(big.recent) == RECENT
    assert len(big) == 100_000 and big.lo == 0.0 and big.hi == 9.0
    curve = big.downsample(60)
    assert len(curve) == 60 and all(abs(v - 4.5) < 0.01 for v in curve)  # every column the mean of its steps
    ramp = Series()
    for i in range(50_000):
        ramp.add(i, float(i))
    cols = ramp.downsample(50)
    assert cols == sorted(cols) and cols[0] < 1000 and cols[-1] > 49_000  # the whole run, in order


def test_the_history_equals_a_digest_computed_from_the_events(session):
    events = run_events(6000)
    # written as a run writes: in pieces, the history saved between them (and continued each time)
    for part in range(0, len(events), 1500):
        write_events(session, events[part:part + 1500], damaged_line=3 if part == 0 else None)
        save_history(session)
    hist, got = loaded(session)
    assert hist.why == "current"
    want = computed(session)
    assert got == want
    d = hist.digest
    assert d.corrupt_lines == 1 and d.status == "running" and d.ranks.keys() == {0, 1}
    assert not d.series["loss"].exact and d.series["eval_loss"].exact
    assert len(d.notable) <= 200 and all(len(r.get("message", "")) <= 2000 for r in d.notable)
    assert os.path.getsize(session / "history.json") < 400_000  # bounded, whatever the run's length


@pytest.mark.parametrize("harm", ["missing", "damaged body", "not json", "other version", "events replaced",
                                  "events shorter", "events edited before the offset"])
def test_the_history_is_rebuilt_when_it_cannot_be_trusted(session, harm):
    events = run_events(3000, seed=1)
    write_events(session, events[:2000])
    save_history(session)
    covered = os.path.getsize(session / "events.jsonl")
    write_events(session, events[2000:])
    path, ev = session / "history.json", session / "events.jsonl"
    if harm == "missing":
        path.unlink()
    elif harm == "damaged body":
        raw = bytearray(path.read_bytes())
        raw[-50] = ord("7") if raw[-50] != ord("7") else ord("8")
        path.write_bytes(bytes(raw))
    elif harm == "not json":
        path.write_bytes(b"\x00\xff garbage\n")
    elif harm == "other version":
        head, body = path.read_bytes().split(b"\n", 1)
        path.write_bytes(json.dumps({**json.loads(head), "version": 999}).encode() + b"\n" + body)
    elif harm == "events replaced":  # another run's events in its place, longer than the offset
        ev.unlink()
        write_events(session, run_events(3000, seed=2))
    elif harm == "events shorter":
        ev.unlink()
        write_events(session, events[:100])
    else:  # a value changed in place just before the history's offset (same size); the hash covers the
        # last 4 KiB it read: an append-only log edited further back goes unseen (documented)
        raw = bytearray(ev.read_bytes())
        i = raw.index(b'"loss": ', covered - 2000) + 8
        raw[i:i + 3] = b"0.5"
        ev.write_bytes(bytes(raw))
    hist, got = loaded(session)
    assert hist.why not in ("current", "behind"), hist.why
    assert got == computed(session)


def test_a_history_behind_the_events_reads_only_the_new_bytes(session):
    events = run_events(4000, seed=3)
    write_events(session, events[:3000])
    save_history(session)
    covered = os.path.getsize(session / "events.jsonl")
    write_events(session, events[3000:])
    hist = History.load(session)
    assert hist.why == "behind"
    hist.catch_up()
    assert hist.tail.bytes_read == os.path.getsize(session / "events.jsonl") - covered
    assert json.loads(json.dumps(hist.digest.to_json())) == computed(session)


def test_the_writer_keeps_the_history_and_home_reads_no_events(tmp_path, monkeypatch):
    w = SessionWriter.create(tmp_path, "train", name="run", stage="sft")
    w.set_status("running")
    for step in range(1, 301):
        w.event("metrics", step=step, max_steps=300, loss=1.0 / step)
    w.event("event", kind="finished", step=300)
    w.set_status("finished")
    w.close()
    head = read_header(w.path)
    assert head is not None and head["offset"] == os.path.getsize(w.path / "events.jsonl")
    assert head["step"] == 300 and head["max_steps"] == 300 and head["status"] == "finished"
    assert oct(os.stat(w.path / "history.json").st_mode & 0o777) == "0o600"  # the folder's privacy

    def no_events(*a, **k):
        raise AssertionError("Home read the events")

    monkeypatch.setattr(session_mod, "last_events", no_events)
    info = list_sessions(tmp_path)[0]
    assert (info.step, info.total_steps) == (300, 300) and info.last_event_time is not None
    # events written after the history (a live run between saves): the header is not trusted, the tail is read
    monkeypatch.undo()
    with open(w.path / "events.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "type": "metrics", "step": 301, "max_steps": 400}) + "\n")
    assert read_header(w.path) is None
    assert list_sessions(tmp_path)[0].step == 301


def test_a_writer_that_cannot_write_its_history_still_runs(tmp_path, monkeypatch):
    w = SessionWriter.create(tmp_path, "train", name="run", stage="sft")

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(History, "save", full)
    for step in range(1, 50):
        w.event("metrics", step=step, max_steps=50, loss=1.0)
    w.set_status("finished")
    assert not (w.path / "history.json").exists()
    assert len((w.path / "events.jsonl").read_text().splitlines()) == 50


# --------------------------------------------------------------------------- the Monitor


def big_session(root: Path, n: int = 20_000, with_history: bool = False) -> Path:
    w = SessionWriter.create(root, "train", name="night", stage="dpo")
    w.update(plan={"name": "qlora"})
    w.set_status("running")
    w.close()
    os.remove(w.path / "history.json")
    write_events(w.path, [{"time": time.time() - n + i, "type": "metrics", "step": i, "max_steps": 10 * n,
                           "loss": 5.0 / (i + 1)} for i in range(1, n + 1)])
    if with_history:
        save_history(w.path)
    return w.path


async def _until(pilot, cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        await pilot.pause(0.05)
    assert cond(), "timed out"


def test_the_first_frame_shows_the_newest_step_while_the_history_loads(tmp_path, monkeypatch):
    s = big_session(tmp_path)
    release = threading.Event()
    original = MonitorScreen._read_history

    def held(self, hist):  # the background read waits until the test has looked at the first frame
        release.wait(60)
        original(self, hist)

    monkeypatch.setattr(MonitorScreen, "_read_history", held)

    async def go():
        app = RoundsApp(tmp_path, s)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await _until(pilot, lambda: screen.state.step is not None)
            await pilot.pause(0.1)
            progress = str(screen.query_one("#progress").render())
            assert not screen.loaded and "step 20000/200000" in progress and "reading the history" in progress
            assert len(screen.state.series["loss"]) < 20_000  # only the file's end so far
            release.set()
            await _until(pilot, lambda: screen.loaded)
            await pilot.pause(0.1)
            assert len(screen.state.series["loss"]) == 20_000
            assert "reading the history" not in str(screen.query_one("#progress").render())
        assert read_header(s) is not None  # the history it read was saved for the next opening

    asyncio.run(go())


@pytest.mark.parametrize("inotify", [True, False])
def test_the_monitor_follows_a_growing_file_without_reading_it_again(tmp_path, monkeypatch, inotify):
    if not inotify:
        monkeypatch.setenv("ROUNDS_NO_INOTIFY", "1")
    s = big_session(tmp_path, 5000, with_history=True)
    before = os.path.getsize(s / "events.jsonl")

    async def go():
        app = RoundsApp(tmp_path, s)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await _until(pilot, lambda: screen.loaded)
            assert screen.history.why == "current" and screen.history.tail.bytes_read == 0
            assert (screen._watch is not None) == inotify
            w = SessionWriter.reopen(s)
            for step in range(5001, 5031):
                w.event("metrics", step=step, max_steps=50_000, loss=0.01)
            w.close()
            await _until(pilot, lambda: screen.state.step == 5030)
            await pilot.pause(0.1)
            assert screen.history.tail.bytes_read == os.path.getsize(s / "events.jsonl") - before
            assert "step 5030/50000" in str(screen.query_one("#progress").render())
            assert len(screen.state.series["loss"]) == 5030

    asyncio.run(go())


def test_the_monitor_redraws_only_panels_whose_text_changed(tmp_path, monkeypatch):
    s = big_session(tmp_path, 3000, with_history=True)
    redraws: list[str] = []
    original = MetricChart.refresh

    def counted(self, *a, **k):
        redraws.append(self.id)
        return original(self, *a, **k)

    async def go():
        app = RoundsApp(tmp_path, s)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await _until(pilot, lambda: screen.loaded)
            await pilot.pause(0.2)
            monkeypatch.setattr(MetricChart, "refresh", counted)
            screen.refresh_view()
            screen.refresh_view()
            assert redraws == []  # nothing new: nothing redrawn
            screen.state.feed([{"type": "metrics", "step": 3001, "max_steps": 30_000, "grad_norm": 1.0}])
            screen.refresh_view()
            assert redraws == []  # a series not on the screen
            screen.state.feed([{"type": "metrics", "step": 3002, "max_steps": 30_000, "loss": 1e6}])
            screen.refresh_view()
            assert redraws == ["chart0"]  # the loss chart, alone

    asyncio.run(go())
