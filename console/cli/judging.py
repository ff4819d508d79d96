"""`rounds` verbs for judging answers: evaluate a model, assess its answers (by hand or by a judge),
report and compare."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from console.cli.common import _cols, _session_path, _verb
from engine.errors import UserError


def add_verbs(sub) -> None:
    p = _verb(sub, "eval", "generate answers for a test set into an eval session (batched, greedy, resumable)",
              "rounds eval --model sessions/SFT_ID/merged --data engine/demo_data/test.jsonl --held-out",
              "Writes results.jsonl (one line per item, as each batch finishes) and results.csv: id, question,\n"
              "context, reference, answer, model, generation settings and pre-screen flags (numbers and terms\n"
              "absent from the reference, empty, truncated, repetitive answers, length ratio). Ctrl-C stops\n"
              "after the current batch; `rounds eval --resume SESSION` continues from the first missing item.")
    p.add_argument("--model", metavar="PATH", help="local model folder")
    p.add_argument("--adapter", metavar="PATH", help="a LoRA adapter on top of --model")
    p.add_argument("--data", metavar="FILE", help="test set: question, reference (+ id, context)")
    p.add_argument("--max-examples", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per generate() call (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--held-out", action="store_true", help="mark it a held-out test set: `rounds pairs` refuses it")
    p.add_argument("--samples", type=int, default=1, metavar="N",
                   help="N sampled answers per question (items ID~1..ID~N) instead of one greedy answer")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="sampling temperature (with --samples or --check-samples)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --samples / --check-samples)")
    p.add_argument("--check-samples", type=int, default=0, metavar="N",
                   help="also sample N answers per question and keep them beside the greedy answer, for the "
                        "'consistency' judge (self-consistency; e.g. 4)")
    for fld in ("question", "reference", "context", "id"):
        p.add_argument(f"--{fld}", dest=f"col_{fld}", metavar="COL", help=f"column holding the {fld}")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("--resume", metavar="SESSION", help="continue an interrupted evaluation")
    p.set_defaults(func=cmd_eval)

    p = _verb(sub, "assess", "judge an eval session's answers from the keyboard (or mark them automatically)",
              "rounds assess SESSION --annotator alice",
              "Opens the assessment screen: h hallucinated, f faithful, a abstained, u unsure (each marks and\n"
              "moves on), 1-7 categories, m severity, n note, z undo, j/k move, J next unassessed, / search,\n"
              "g go to, F filter (incl. by judge verdict), o most doubtful first (by the automatic judges),\n"
              "r report, ? all keys. Every mark is on disk (fsynced) before the screen moves.\n"
              "SESSION may be a results CSV/JSONL: it is imported into a new eval session first.\n"
              "--auto JUDGE marks every item with an automatic judge instead (annotator auto:JUDGE, with the\n"
              "judge's score and reason), for people to review; the report then measures each judge against\n"
              "the people's marks. Judges:\n" + _judges_help())
    p.add_argument("session", metavar="SESSION|FILE")
    p.add_argument("--annotator", metavar="NAME", help="who is judging (default: $USER)")
    p.add_argument("--blind", action="store_true", help="hide other annotators' marks")
    p.add_argument("--auto", metavar="JUDGE", help="mark automatically instead of opening the screen: "
                   + ", ".join(_judge_names()))
    _judge_options(p)
    for fld in ("question", "reference", "answer", "context", "id"):
        p.add_argument(f"--{fld}", dest=f"col_{fld}", metavar="COL", help=f"with a FILE: column holding the {fld}")
    p.set_defaults(func=cmd_assess)

    p = _verb(sub, "report", "rates with 95 %% intervals, abstention rates, judges against people: report.md and "
                             "report.json",
              "rounds report SESSION")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = _verb(sub, "compare", "two sessions' rates; exact McNemar and the paired difference on shared items",
              "rounds compare SFT_EVAL_ID DPO_EVAL_ID")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--annotator", metavar="NAME", help="use this annotator's marks (default: the consensus)")
    p.add_argument("--judge", metavar="JUDGE", help="first mark both sessions with this automatic judge, then compare "
                   "its marks (annotator auto:JUDGE): " + ", ".join(_judge_names()))
    _judge_options(p)
    p.add_argument("--rejudge", action="store_true", help="with --judge: judge again even where that judge has "
                   "already marked every item")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tui", action="store_true", help="open the Compare screen (changed items side by side)")
    p.set_defaults(func=cmd_compare)


def _judge_names(samples: bool = True) -> list[str]:
    """The registered judges (without those that need sampled answers, with ``samples=False``)."""
    from engine import judges

    return [n for n in judges.names() if samples or not judges.get_class(n).needs_samples]


def _judges_help() -> str:
    from engine import judges

    return "\n".join(f"  {n:<12} {judges.get_class(n).help}" for n in judges.names())


def _judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-model", metavar="PATH", help="for the 'model' judge: a local causal LM folder")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="for scoring judges (consistency, model): the score from which an answer is hallucinated "
                        "(default 0.5)")


def _judged_by(session: Path, annotator: str) -> bool:
    """Every answer of the session already carries a mark by this annotator."""
    from engine.assessment import ASSESSMENTS, labels_by_item, read_marks
    from engine.session.records import read_results

    marked = labels_by_item(read_marks(session / ASSESSMENTS)[0], annotator)
    results = read_results(session)
    return bool(results) and all(r["id"] in marked for r in results)


def _judge_kwargs(args: argparse.Namespace) -> dict:
    name = getattr(args, "auto", None) or getattr(args, "judge", None)
    out = {}
    if getattr(args, "judge_model", None):
        if name != "model":
            raise UserError("--judge-model is for the 'model' judge", field="--judge-model",
                            hint="add --auto model (or --judge model)")
        out["model"] = args.judge_model
    if getattr(args, "threshold", None) is not None:
        out["threshold"] = args.threshold
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from engine import evaluate
    from engine.session import sessions_root

    if args.resume:
        session = _session_path(args, args.resume)
        evaluate.eval_session(session)
    else:
        missing = [f for f in ("model", "data") if not getattr(args, f)]
        if missing:
            raise UserError(f"--{missing[0]} is required (or --resume SESSION)", field=f"--{missing[0]}")
        spec = evaluate.EvalSpec(model=args.model, data=args.data, adapter=args.adapter,
                                 max_examples=args.max_examples, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, device=args.device, held_out=args.held_out,
                                 columns=_cols(args, ("question", "reference", "context", "id")),
                                 samples=args.samples, temperature=args.temperature, seed=args.seed,
                                 check_samples=args.check_samples)
        writer = evaluate.start(spec, sessions_root(args.sessions), name=args.name, shared=args.shared_sessions,
                                command=["rounds", *sys.argv[1:]])
        session = writer.path
        print(f"rounds: evaluation session {writer.id} ({writer.meta['items']} items)", flush=True)
    return evaluate.run(session, echo=lambda m: print(m, flush=True))


def cmd_assess(args: argparse.Namespace) -> int:
    from engine.evaluate import eval_session
    from engine.session import sessions_root

    target = Path(args.session)
    if target.is_file():
        from engine.evaluate import import_results

        writer = import_results(str(target), _cols(args, ("question", "reference", "answer", "context", "id")),
                                sessions_root(args.sessions), shared=args.shared_sessions,
                                command=["rounds", *sys.argv[1:]])
        print(f"rounds: imported {writer.meta['items']} results from {target} into session {writer.id}")
        session = writer.path
    else:
        session = _session_path(args, args.session)
    eval_session(session)
    if args.auto:
        from engine.report import auto_assess

        last = [time.monotonic()]

        def progress(line: str) -> None:  # a judge with a model can take a while: a line every 10 s
            if time.monotonic() - last[0] >= 10:
                last[0] = time.monotonic()
                print(f"rounds: {line}", flush=True)

        counts = auto_assess(session, args.auto, _judge_kwargs(args), echo=progress)
        print(f"rounds: marked {sum(counts.values())} items as auto:{args.auto}: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print(f"  review them: rounds assess {session.name}   (judges' verdicts shown beside each answer)\n"
              f"  rates, and how far the judge agrees with people's marks: rounds report {session.name}")
        return 0
    if not sys.stdout.isatty():
        raise UserError("the assessment screen needs a terminal", hint="run it in a terminal, or use --auto RULE")
    from console.app import run_assess

    annotator = args.annotator or os.environ.get("USER") or "annotator"
    return run_assess(sessions_root(args.sessions), session, annotator, args.blind)


def cmd_report(args: argparse.Namespace) -> int:
    from engine.report import write_report

    session = _session_path(args, args.session)
    rep, md = write_report(session)
    print(json.dumps(rep, indent=1) if args.json else md, end="" if not args.json else "\n")
    if not args.json:
        print(f"(written to {session / 'report.md'} and report.json)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.report import write_compare

    a, b = _session_path(args, args.a), _session_path(args, args.b)
    annotator = args.annotator
    if args.judge:
        from engine.judges import annotator_name
        from engine.report import auto_assess

        if annotator:
            raise UserError("--judge and --annotator both choose whose marks to compare", field="--judge",
                            hint="give one of them")
        annotator = annotator_name(args.judge)
        for s in (a, b):
            if args.rejudge or not _judged_by(s, annotator):
                auto_assess(s, args.judge, _judge_kwargs(args))
    c, md = write_compare(a, b, annotator)
    if args.tui:
        if not sys.stdout.isatty():
            raise UserError("the Compare screen needs a terminal", hint="drop --tui for the printed comparison")
        from console.app import run_compare
        from engine.session import sessions_root

        return run_compare(sessions_root(args.sessions), a, b, annotator)
    print(json.dumps(c, indent=1) if args.json else md, end="" if not args.json else "\n")
    return 0
