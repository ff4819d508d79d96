"""Requests to a running training run: files in ``SESSION/requests/`` that the run acts on at its
next step boundary. The Monitor writes them (keys ``c`` and ``s``), so can a person
(``touch SESSION/requests/stop``); the run reads and clears them (``engine.run.worker``). In a
multi-process run, a rank out of memory asks the supervisor for a relaunch the same way."""

from __future__ import annotations

import time
from pathlib import Path

from engine.session.layout import CHECKPOINT_REQUEST, OOM_REQUEST, REQUESTS, STOP_REQUEST


def _request(session: Path, name: str, who: str) -> Path:
    folder = Path(session) / REQUESTS
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"requested by {who} at {time.ctime()}\n")
    return path


def request_stop(session: Path, who: str = "the console") -> Path:
    """Ask for a graceful stop: a checkpoint at the end of the current step, then status stopped."""
    return _request(session, STOP_REQUEST, who)


def request_checkpoint(session: Path, who: str = "the console") -> Path:
    """Ask for a checkpoint at the next step boundary; the run goes on."""
    return _request(session, CHECKPOINT_REQUEST, who)


def pending(session: Path) -> set[str]:
    """The requests waiting: a subset of {"stop", "checkpoint"}."""
    folder = Path(session) / REQUESTS
    return {n for n in (STOP_REQUEST, CHECKPOINT_REQUEST) if (folder / n).exists()}


def clear(session: Path, name: str) -> None:
    (Path(session) / REQUESTS / name).unlink(missing_ok=True)


def request_smaller_batch(session: Path, info: dict) -> None:
    """A rank ran out of memory (``info``: rank, step, error): the supervisor relaunches every rank
    with half the micro-batch."""
    from engine.session import write_json_atomic

    folder = Path(session) / REQUESTS
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / OOM_REQUEST, info)


def take_smaller_batch_request(session: Path) -> dict | None:
    """The out-of-memory request of a rank, removed as it is read; None when there is none."""
    import json

    path = Path(session) / REQUESTS / OOM_REQUEST
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = {}
    path.unlink(missing_ok=True)
    return info if isinstance(info, dict) else {}
