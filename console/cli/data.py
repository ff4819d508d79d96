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

    p = _verb(sub, "import-run", "make a finished training session from a Trainer's trainer_state.json",
              "rounds import-run outputs/stage-b --name stage-b",
              "Reads DIR/trainer_state.json (or that of its last checkpoint-N, or of a checkpoint folder given)\n"
              "that every Hugging Face Trainer and TRL trainer writes: its log_history becomes the session's\n"
              "metrics and evaluations, so Home lists the run and the Monitor draws its curves. Only JSON is\n"
              "read (never training_args.bin). A run cut short is imported as stopped at its last step.")
    p.add_argument("dir", metavar="DIR", help="the trainer's output_dir, a checkpoint-N in it, or trainer_state.json")
    p.add_argument("--name", metavar="NAME", help="the session's name (default: the folder's)")
    p.add_argument("--stage", metavar="STAGE", help="its stage (default: from the keys it logged: dpo, kto, sft)")
    p.add_argument("--again", action="store_true", help="import it even if a session already holds this state")
    p.set_defaults(func=cmd_import_run)

    p = _verb(sub, "export", "write a session's records for another tool (TensorBoard)",
              "rounds export SESSION --tensorboard runs/   (then: tensorboard --logdir runs/)",
              "Writes every number the session recorded as TensorBoard scalars: train/KEY for each logged\n"
              "metric, eval/KEY for evaluations, system/... for CPU, RAM and GPU, at their steps and times,\n"
              "into DIR/SESSION_ID (so several sessions exported to one DIR show side by side). Needs the\n"
              "tensorboard extra: pip install 'rounds[tensorboard]'. Offline; the session is not changed.")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--tensorboard", metavar="DIR", required=True, help="TensorBoard log folder to write into")
    p.set_defaults(func=cmd_export)


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


def cmd_import_run(args: argparse.Namespace) -> int:
    from engine.run.importrun import import_run
    from engine.session import sessions_root

    writer = import_run(args.dir, sessions_root(args.sessions), name=args.name, stage=args.stage,
                        shared=args.shared_sessions, command=["rounds", *sys.argv[1:]], again=args.again)
    meta = writer.meta
    counts = meta.get("imported") or {}
    print(f"rounds: imported {meta['config']['imported_from']} into session {writer.id}: "
          f"{counts.get('metrics', 0)} logged steps, {counts.get('eval', 0)} evaluations, "
          f"{meta.get('stage') or 'stage unknown'}, {meta['status']} at step {meta['config']['global_step']}"
          + (f" of {meta['config']['max_steps']}" if meta['config'].get('max_steps') else "")
          + f"\n  see its curves: rounds watch {writer.id}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from console.cli.common import _session_path
    from engine.session.export import to_tensorboard

    session = _session_path(args, args.session)
    done = to_tensorboard(session, args.tensorboard)
    running = " (the run is still going: this is up to now)" if done["status"] == "running" else ""
    print(f"rounds: wrote {done['points']} points of {len(done['tags'])} scalars (to step {done['last_step']}) "
          f"into {done['dir']}{running}\n  see them: tensorboard --logdir {args.tensorboard}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from engine.evaluate import import_results
    from engine.session import sessions_root

    writer = import_results(args.file, _cols(args, ("question", "reference", "answer", "context", "id")),
                            sessions_root(args.sessions), name=args.name, shared=args.shared_sessions,
                            command=["rounds", *sys.argv[1:]], model=args.model_name, held_out=args.held_out)
    print(f"rounds: imported {writer.meta['items']} results into session {writer.id}\n"
          f"  assess them by hand: rounds assess {writer.id}   (or automatically: --auto contains)")
    return 0
