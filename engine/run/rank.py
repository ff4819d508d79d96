"""``python -m engine.run.rank SESSION``: one rank of a multi-process run, started by ``accelerate
launch`` (the supervisor's, or your own after ``rounds train --prepare-only``). Rank 0 writes
the session; the others write only their own system records."""

from __future__ import annotations

import sys

from engine.run.worker import _session_arg, run_session


def main(argv: list[str] | None = None) -> int:
    session = _session_arg(argv, "engine.run.rank")
    return 2 if session is None else run_session(session)


if __name__ == "__main__":
    sys.exit(main())
