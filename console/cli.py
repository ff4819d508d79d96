"""The ``rounds`` command line: one entry point, one verb per job.

Verbs import what they need when they run, so ``rounds --help`` and the console start
fast and never load torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from engine import __version__
from engine.errors import UserError

PROG = "rounds"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, _terminal_width()))


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options every verb accepts, before or after the verb."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--sessions", metavar="DIR", default=default,
                        help="sessions root (default: $ROUNDS_SESSIONS or ./sessions)")
    parser.add_argument("--shared-sessions", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="make new session folders group-readable (default: owner only, 0700/0600)")


def _verb(sub, name: str, summary: str, example: str, description: str = "") -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=(description or summary),
                       epilog="example:\n  " + example, formatter_class=_Formatter)
    _common(p, top=False)
    return p


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

    p = _verb(sub, "make-tiny-model", "write a tiny real Hugging Face model folder (for tests and the demo)",
              "rounds make-tiny-model models/tiny --size tiny --seed 0",
              "Writes a Llama-architecture causal LM (config.json, model.safetensors) and a byte-level BPE\n"
              "tokenizer trained locally on the bundled demo text, with a chat template. No network.\n"
              "tiny is about 2 M parameters (tests), small about 25 M (the demo).")
    p.add_argument("out", metavar="OUT", help="folder to write (must not exist or be empty, unless --force)")
    p.add_argument("--size", choices=["tiny", "small"], default="tiny", help="model size (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the weights (default: 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_make_tiny_model)

    p = _verb(sub, "validate", "check a data file and name every problem by line and field",
              "rounds validate data/train.csv --kind sft --question Question --answer Response",
              "Checks an SFT file (question, answer), a test set (question, reference) or DPO pairs\n"
              "(prompt, chosen, rejected; strings or message lists) in CSV, TSV, JSONL or a JSON array.\n"
              "Exit code 0 when there are no errors, 1 when there are.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--kind", choices=["sft", "test", "dpo"], required=True, help="what the file should hold")
    for fld in ("question", "answer", "context", "reference", "prompt", "chosen", "rejected", "id"):
        p.add_argument(f"--{fld}", metavar="COL", help=f"column holding the {fld} (default: {fld})")
    p.add_argument("--model", metavar="PATH", help="a model folder: also print token-length statistics")
    p.add_argument("--max-length", type=int, metavar="N", help="with --model: count examples longer than N tokens")
    p.add_argument("--max-problems", type=int, default=50, metavar="N", help="problems to print (0: all; default 50)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_validate)
    return parser


# --------------------------------------------------------------------------- verbs

def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from engine.tinymodel import build_tiny_model

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    out = build_tiny_model(args.out, size=args.size, seed=args.seed, force=args.force)
    info = json.loads((out / "rounds_tiny_model.json").read_text())
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    print(f"wrote {args.size} model to {out}: {info['parameters'] / 1e6:.1f} M parameters, vocab {vocab}, "
          f"seed {args.seed} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from engine.data import format_report, token_stats, validate_file

    fields = ("question", "answer", "context", "reference", "prompt", "chosen", "rejected", "id")
    columns = {f: getattr(args, f) for f in fields if getattr(args, f)}
    report = validate_file(args.file, args.kind, columns)
    if args.model and report.rows:
        token_stats(report, _load_tokenizer(args.model), args.max_length)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    else:
        sys.stdout.write(format_report(report, args.max_problems))
    return 0 if report.ok else 1


def _load_tokenizer(path: str):
    if not Path(path).is_dir():
        raise UserError(f"{path}: not a model folder", field="--model",
                        hint="give a local folder with tokenizer files (nothing is downloaded)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load a tokenizer ({e})", field="--model") from None


# --------------------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
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
