"""`rounds` verbs. Training data from judgements: DPO pairs and KTO examples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from console.cli.common import _session_path, _verb
from console.cli.judging import _judge_kwargs, _judge_names
from engine.errors import UserError


def add_verbs(sub) -> None:
    p = _verb(sub, "pairs", "build DPO triplets (or KTO examples): from marked answers, a dataset's columns, "
                            "labelled statements, or the model's own samples",
              "rounds pairs ROUND_ID --out data/round --refusal \"I don't know {drug}.\"\n"
              "  rounds pairs ROUND_ID --kto --out data/round-kto\n"
              "  rounds pairs --from-columns medhallu.csv --prompt question --context knowledge "
              "--chosen ground_truth \\\n"
              "      --rejected hallucinated_answer --out data/medhallu --exclude test.jsonl\n"
              "  rounds pairs --from-labels medhal.csv --group context --text statement --label label \\\n"
              "      --prompt-template \"Read this:\\n{context}\\nState one fact it supports.\" --out data/medhal\n"
              "  rounds pairs --from-samples --model sessions/SFT_ID/merged --data sft_train.jsonl --samples 4 "
              "--out data/samples",
              "Four sources, one at a time:\n"
              "  SESSION ...     answers judged by hand or by `assess --auto` (chosen = reference, rejected = the\n"
              "                  answer judged hallucinated or over-refusing; --refusal also keeps faithful answers\n"
              "                  over a refusal); --kto: unpaired KTO examples instead (faithful desirable,\n"
              "                  hallucinated not, no pairing), train_kto.jsonl and val_kto.jsonl\n"
              "  --from-columns  a file with a question, a correct and a hallucinated answer per row (MedHallu)\n"
              "  --from-labels   statements labelled factual / not factual sharing a group (MedHal): a factual and\n"
              "                  a non-factual statement of one group make a pair; the prompt is --prompt-template\n"
              "                  over the group's row (default: the group column itself)\n"
              "  --from-samples  N sampled answers per question from your model (an eval session: resumable, and\n"
              "                  `rounds assess`-able), judged against the reference; a faithful answer is chosen\n"
              "                  over a hallucinated one, the reference when no sample is faithful\n"
              "Each writes --out DIR/train_dpo.jsonl and val_dpo.jsonl (split by question: never one\n"
              "question in both), pairs_sources.jsonl (the source rows of every pair) and pairs_report.json/.md\n"
              "(counts, drops and why, length ratios). They stream: a file of any size is read once, and spilled\n"
              "to disk by question, never held whole. A row that cannot be read is reported by line and skipped.\n"
              "Every run is a pairs session (its questions' fingerprints let `compare` warn of leaks).")
    p.add_argument("session_refs", metavar="SESSION", nargs="*", help="eval sessions whose marks make the pairs")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (made if missing)")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="held back for validation, by question (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--annotator", metavar="NAME", help="use this annotator's marks (default: the consensus)")
    g = p.add_argument_group("from marked sessions")
    g.add_argument("--allow-test-items", action="store_true", help="allow items of held-out test sessions")
    g.add_argument("--kto", action="store_true",
                   help="write KTO examples instead (prompt, completion, label; for `rounds train kto`): answers "
                        "judged faithful are desirable, hallucinated (or over-refusing) ones undesirable, no "
                        "pairing needed")
    g.add_argument("--no-reference", action="store_true",
                   help="with --kto: leave out the references (by default the reference of an answer judged "
                        "hallucinated is a desirable example beside it)")
    g.add_argument("--refusal", metavar="TEXT",
                   help="also pair each faithful answer (chosen) with this refusal (rejected), so DPO keeps "
                        "answering what the model knows; {field} takes the item's extra fields")
    g = p.add_argument_group("--from-columns FILE")
    g.add_argument("--from-columns", metavar="FILE")
    g.add_argument("--prompt", dest="pc_prompt", metavar="COL", help="the question")
    g.add_argument("--chosen", dest="pc_chosen", metavar="COL", help="the correct answer")
    g.add_argument("--rejected", dest="pc_rejected", metavar="COL", help="the hallucinated answer")
    g.add_argument("--context", dest="pc_context", metavar="COL", help="knowledge put before the question")
    g.add_argument("--id", dest="pc_id", metavar="COL", help="row id, matched by --exclude (default: id)")
    g = p.add_argument_group("--from-labels FILE")
    g.add_argument("--from-labels", metavar="FILE")
    g.add_argument("--group", metavar="COL", help="rows with the same value are about the same prompt")
    g.add_argument("--text", metavar="COL", help="the statement")
    g.add_argument("--label", metavar="COL", help="factual or not (true/false, 1/0, yes/no, factual/...)")
    g.add_argument("--prompt-template", metavar="T", help="the prompt, with {column} fields from the group's row")
    g.add_argument("--factual", action="append", metavar="VALUE", help="a label value that means factual")
    g.add_argument("--not-factual", action="append", metavar="VALUE", help="a label value that means not factual")
    g = p.add_argument_group("--from-samples")
    g.add_argument("--from-samples", action="store_true")
    g.add_argument("--model", metavar="PATH", help="the (SFT) model that answers")
    g.add_argument("--adapter", metavar="PATH", help="a LoRA adapter on top of --model")
    g.add_argument("--data", metavar="FILE", help="questions with a reference: an SFT file (question, answer) "
                                                  "or a test file (question, reference)")
    g.add_argument("--samples", type=int, default=4, metavar="N", help="answers per question (default 4)")
    g.add_argument("--temperature", type=float, default=0.8, metavar="T")
    g.add_argument("--judge", default="contains", metavar="JUDGE",
                   help="how each answer is judged (default contains; marks: the session's own marks; or "
                        + ", ".join(_judge_names(samples=False)) + ")")
    g.add_argument("--judge-model", metavar="PATH", help="with --judge model: the judging model's folder")
    g.add_argument("--batch-size", type=int, default=8, metavar="N", help="questions per generate() call")
    g.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--resume", metavar="SESSION", help="continue (or re-judge) the samples of this session")
    g = p.add_argument_group("for the --from-* sources (--exclude also for SESSION)")
    g.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="SESSION_OR_FILE",
                   help="drop every question of these eval sessions or test files (by id and by text)")
    g.add_argument("--max-length", type=int, metavar="N", help="drop pairs longer than N tokens (needs a tokenizer)")
    g.add_argument("--tokenizer", metavar="PATH", help="model folder whose tokenizer counts tokens")
    g.add_argument("--max-pairs-per-group", type=int, default=4, metavar="N",
                   help="at most N pairs from one group / question (default 4)")
    g.add_argument("--name", metavar="NAME", help="name of the pairs session")
    p.set_defaults(func=cmd_pairs)


def cmd_pairs(args: argparse.Namespace) -> int:
    sources = [n for n, on in (("SESSION", bool(args.session_refs)), ("--from-columns", args.from_columns),
                               ("--from-labels", args.from_labels), ("--from-samples", args.from_samples)) if on]
    if len(sources) != 1:
        raise UserError("give one source: " + (" and ".join(sources) + " both given" if sources else "none given"),
                        hint="SESSION ..., --from-columns FILE, --from-labels FILE or --from-samples")
    if args.session_refs:
        return _pairs_from_marks(args)
    for flag, on in (("--kto", args.kto), ("--no-reference", args.no_reference), ("--refusal", args.refusal),
                     ("--allow-test-items", args.allow_test_items)):
        if on:
            raise UserError(f"{flag} is for pairs from marked sessions (rounds pairs SESSION ...)", field=flag)
    from engine import pairs
    from engine.session import sessions_root

    opts = pairs.PairOptions(out=args.out, val_fraction=pairs.DEFAULT_VAL_FRACTION if args.val_fraction is None
                             else args.val_fraction,
                             seed=args.seed, exclude=args.exclude, max_length=args.max_length,
                             tokenizer=args.tokenizer, max_pairs_per_group=args.max_pairs_per_group)
    root = sessions_root(args.sessions)
    if args.from_columns:
        need = [f for f, v in (("--prompt", args.pc_prompt), ("--chosen", args.pc_chosen),
                               ("--rejected", args.pc_rejected)) if not v]
        if need:
            raise UserError(f"--from-columns needs {', '.join(need)}", field=need[0],
                            hint="name the columns: --prompt COL --chosen COL --rejected COL [--context COL]")
        mode = pairs.columns_mode(args.from_columns, args.pc_prompt, args.pc_chosen, args.pc_rejected,
                                  args.pc_context, args.pc_id)
    elif args.from_labels:
        need = [f for f, v in (("--group", args.group), ("--text", args.text), ("--label", args.label)) if not v]
        if need:
            raise UserError(f"--from-labels needs {', '.join(need)}", field=need[0],
                            hint="name the columns: --group COL --text COL --label COL")
        mode = pairs.labels_mode(args.from_labels, args.group, args.text, args.label, args.prompt_template,
                                 args.factual, args.not_factual, args.max_pairs_per_group, args.seed)
    else:
        session = _sample(args, root)
        if session is None:
            return 0
        mode = pairs.samples_mode(session, args.judge, args.annotator, args.max_pairs_per_group,
                                  _judge_kwargs(args))
        if opts.max_length and not opts.tokenizer:
            from engine.session import read_session_json

            opts.tokenizer = read_session_json(session)["config"]["model"]
    rep = pairs.build(mode, opts, root, name=args.name, command=["rounds", *sys.argv[1:]],
                      shared=args.shared_sessions)
    print(pairs.summary(rep))
    return 0


def _sample(args: argparse.Namespace, root: Path) -> Path | None:
    """The eval session holding the samples: made now, continued, or given finished."""
    from engine import evaluate

    if args.resume:
        session = _session_path(args, args.resume)
        meta = evaluate.eval_session(session)
    else:
        missing = [f for f in ("model", "data") if not getattr(args, f)]
        if missing:
            raise UserError(f"--from-samples needs --{missing[0]} (or --resume SESSION)", field=f"--{missing[0]}")
        spec = evaluate.EvalSpec(model=args.model, data=args.data, adapter=args.adapter,
                                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device,
                                 samples=args.samples, temperature=args.temperature, seed=args.seed)
        writer = evaluate.start(spec, root, name=args.name or "samples", shared=args.shared_sessions,
                                command=["rounds", *sys.argv[1:]])
        session, meta = writer.path, writer.meta
        print(f"rounds: samples session {writer.id}: {meta['questions']} questions x {args.samples} answers",
              flush=True)
    if meta.get("status") != "finished":
        code = evaluate.run(session, echo=lambda m: print(m, flush=True))
        meta = evaluate.eval_session(session)
        if code or meta.get("status") != "finished":
            print(f"rounds: the samples are not complete; continue with\n"
                  f"  rounds pairs --from-samples --resume {session.name} --out {args.out}")
            return None if not code else sys.exit(code)
    return session


def _pairs_from_marks(args: argparse.Namespace) -> int:
    from engine.pairs import DEFAULT_VAL_FRACTION, make_kto, make_pairs, summary

    sessions = [_session_path(args, s) for s in args.session_refs]
    common = dict(val_fraction=DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction,
                  annotator=args.annotator, allow_test_items=args.allow_test_items, seed=args.seed,
                  exclude=args.exclude, root=sessions[0].parent, name=args.name,  # where `compare` looks
                  command=["rounds", *sys.argv[1:]], shared=args.shared_sessions)
    if args.kto:
        if args.refusal:
            raise UserError("--refusal makes DPO pairs; KTO examples need no counterpart", field="--refusal",
                            hint="drop --refusal, or drop --kto")
        rep = make_kto(sessions, Path(args.out), with_reference=not args.no_reference, **common)
    else:
        if args.no_reference:
            raise UserError("--no-reference is for --kto", field="--no-reference")
        rep = make_pairs(sessions, Path(args.out), refusal=args.refusal, **common)
    print(summary(rep))
    return 0
