"""`rounds` verbs. Data files: a tiny model to try things on, checking a data file, importing results."""

from __future__ import annotations

import argparse
import json
import sys
import time

from console.cli.common import _cols, _verb


def add_verbs(sub) -> None:
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
              "Checks a data file of one kind, in CSV, TSV, JSONL or a JSON array:\n"
              + "\n".join(f"  {n:<5} {k.label}: {', '.join(k.required)}" + (f" (+ {', '.join(k.optional)})"
                                                                             if k.optional else "")
                          for n, k in _data_kinds().items())
              + "\nDPO and KTO fields are strings or TRL's message lists. Exit code 0 when there are no\n"
                "errors, 1 when there are.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--kind", choices=list(_data_kinds()), required=True, help="what the file should hold: "
                   + "; ".join(f"{n} ({', '.join(k.required)})" for n, k in _data_kinds().items()))
    for fld in _data_fields():
        p.add_argument(f"--{fld}", metavar="COL", help=f"column holding the {fld} (default: {fld})")
    p.add_argument("--model", metavar="PATH", help="a model folder: also print token-length statistics")
    p.add_argument("--max-length", type=int, metavar="N", help="with --model: count examples longer than N tokens")
    p.add_argument("--max-problems", type=int, default=50, metavar="N", help="problems to print (0: all; default 50)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_validate)

    p = _verb(sub, "import-results", "make an eval session from an existing results CSV/JSONL",
              "rounds import-results evaluation_results.csv --question Question --reference gold --answer output")
    p.add_argument("file", metavar="FILE")
    for fld in ("question", "reference", "answer", "context", "id"):
        p.add_argument(f"--{fld}", dest=f"col_{fld}", metavar="COL", help=f"column holding the {fld}")
    p.add_argument("--model-name", metavar="TEXT", help="what produced the answers (recorded)")
    p.add_argument("--held-out", action="store_true", help="mark it a held-out test set")
    p.add_argument("--name", metavar="NAME")
    p.set_defaults(func=cmd_import)


def _data_kinds() -> dict:
    from engine.data import kinds

    return kinds()


def _data_fields(exclude: tuple[str, ...] = ()) -> list[str]:
    """Every field of every data kind, for the column-mapping flags."""
    fields = dict.fromkeys(f for k in _data_kinds().values() for f in k.required + k.optional)
    return [f for f in fields if f not in exclude]


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
    from engine.data import format_report, load_tokenizer_folder, token_stats, validate_file

    columns = {f: getattr(args, f) for f in _data_fields() if getattr(args, f)}
    report = validate_file(args.file, args.kind, columns, keep_rows=False)  # a sample: bounded memory
    if args.model and report.rows:
        token_stats(report, load_tokenizer_folder(args.model), args.max_length)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    else:
        sys.stdout.write(format_report(report, args.max_problems))
    return 0 if report.ok else 1


def cmd_import(args: argparse.Namespace) -> int:
    from engine.evaluate import import_results
    from engine.session import sessions_root

    writer = import_results(args.file, _cols(args, ("question", "reference", "answer", "context", "id")),
                            sessions_root(args.sessions), name=args.name, shared=args.shared_sessions,
                            command=["rounds", *sys.argv[1:]], model=args.model_name, held_out=args.held_out)
    print(f"rounds: imported {writer.meta['items']} results into session {writer.id}\n"
          f"  assess them by hand: rounds assess {writer.id}   (or automatically: --auto contains)")
    return 0
