"""The ``rounds`` command line: one entry point, verbs in groups, one module a group.

``views`` (demo, watch, and plain ``rounds``: Home), ``data`` (make-tiny-model, validate,
import-results), ``training`` (plan, train, resume), ``judging`` (eval, assess, report,
compare), ``pairs`` (pairs). A group module has ``add_verbs(sub)`` and the verbs' ``cmd_*``
functions; the work is the engine's, and an engine result formats itself (``PlanResult.table``).
Verbs import what they need when they run, so ``rounds --help`` and the console start fast
and never load torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from console.cli import data, judging, pairs, training, views
from console.cli.common import PROG, _common, _Formatter
from engine import __version__
from engine.errors import UserError

GROUPS = (views, data, training, judging, pairs)  # the order of `rounds --help`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Train and assess hallucination-resistant language models on one GPU or a CPU.",
        epilog="Run `rounds VERB --help` for a verb's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")

    for group in GROUPS:
        group.add_verbs(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        # no terminal to draw on (and not a browser's, under `rounds serve`): say what there is instead
        if not sys.stdout.isatty() and not os.environ.get("TEXTUAL_DRIVER"):
            parser.print_help()
            return 0
        args.func = views.cmd_home
    try:
        return args.func(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: short message, traceback on request
        if os.environ.get("ROUNDS_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e}\n"
              f"  this is a bug in rounds; run again with ROUNDS_DEBUG=1 to see the traceback", file=sys.stderr)
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
