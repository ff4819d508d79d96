"""What every verb module shares: the help formatter, the common options, session lookup."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from engine.errors import UserError
from engine.session.layout import SESSION_JSON

PROG = "rounds"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, _terminal_width()))


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def at_least(least: float, kind=int, strict: bool = False):
    """An argparse type: a number of ``kind`` that is at least ``least`` (``strict``: more than it);
    NaN and infinities are refused. The message names the flag (argparse adds it)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        ok = value > least if strict else value >= least
        if not ok or value == float("inf"):  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"must be {'more than' if strict else 'at least'} {least:g} "
                                             f"(got {text})")
        return value
    parse.__name__ = "whole number" if kind is int else "number"
    return parse


POSITIVE = at_least(1)
POSITIVE_NUMBER = at_least(0, float, strict=True)


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options every verb accepts, before or after the verb."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--sessions", metavar="DIR", default=default,
                        help="sessions root (default: $ROUNDS_SESSIONS, else ./sessions if it holds sessions, "
                             "else a clone's marked sessions/ above, else ~/.local/share/rounds/sessions)")
    parser.add_argument("--shared-sessions", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="make new session folders group-readable (default: owner only, 0700/0600)")


def _verb(sub, name: str, summary: str, example: str, description: str = "") -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=(description or summary.replace("%%", "%")),
                       epilog="example:\n  " + example, formatter_class=_Formatter)
    _common(p, top=False)
    return p


def _session_path(args: argparse.Namespace, ref: str) -> Path:
    """A session given by id (under the sessions root) or by path."""
    from engine.session import sessions_root

    p = Path(ref)
    if (p / SESSION_JSON).is_file():
        return p
    candidate = sessions_root(args.sessions) / ref
    if (candidate / SESSION_JSON).is_file():
        return candidate
    raise UserError(f"no session {ref!r} (looked in {sessions_root(args.sessions)})",
                    hint="give a session id from `ls sessions/` or a session folder path")


def _cols(args: argparse.Namespace, fields: tuple[str, ...]) -> dict[str, str]:
    return {f: getattr(args, f"col_{f}") for f in fields if getattr(args, f"col_{f}", None)}
