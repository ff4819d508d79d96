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
    p = sub.add_parser(name, help=summary, description=(description or summary.replace("%%", "%")),
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

    p = _verb(sub, "demo", "the whole loop on this CPU: builds a small model, trains it, opens the console",
              "rounds demo",
              "Builds the demo model (cached after the first time) and starts, in the background, a real SFT\n"
              "run on the bundled fictional-drug data followed by an evaluation of the trained model on a\n"
              "held-out test set; opens the console on the run's Monitor (esc: all sessions, where the\n"
              "evaluation appears when it is ready to assess; q leaves the console, the run goes on).\n"
              "--pipeline runs the whole loop: SFT, evaluation, the `abstain` judge on an assessment round,\n"
              "DPO pairs, DPO (full parameters, reference precomputed: see the README for why), evaluation\n"
              "of the DPO model, comparison; the console follows each run and ends on the comparison\n"
              "(--no-tui prints each stage's progress instead).")
    p.add_argument("--pipeline", action="store_true", help="run the whole SFT → DPO → compare loop")
    p.add_argument("--no-tui", action="store_true", help="print progress instead of opening the console")
    p.add_argument("--quick", action="store_true", help="a tiny model and one epoch: checks the plumbing in ~1 min")
    p.set_defaults(func=cmd_demo)

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

    p = _verb(sub, "plan", "predict peak memory and time of SFT/DPO strategies from config.json alone",
              "rounds plan --model models/llama-2-7b/config.json --stage dpo --gpu-mem 12GiB --pairs 8484",
              "Reads only the model's config.json (no weights) and predicts, for each strategy (full, lora,\n"
              "qlora; with and without precomputed reference log-probs and gradient checkpointing; micro-batch\n"
              "1..--batch), the peak memory by component and the time per step and in total. Says which fit\n"
              "the budget (10% kept free) and why the others don't, and recommends the fastest that fits.")
    p.add_argument("--model", required=True, metavar="PATH", help="a model folder or its config.json")
    p.add_argument("--stage", choices=["sft", "dpo"], required=True)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--gpu-mem", metavar="SIZE", help="plan for a GPU with this much memory (12GiB, 16GB, ...)")
    budget.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="plan for this machine's GPU (auto) or its CPU and free RAM")
    p.add_argument("--max-length", type=int, default=1024, metavar="N", help="tokens per example (default 1024)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="effective batch; micro-batches 1..N are tried")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--pairs", "--examples", type=int, dest="examples", metavar="N", help="training examples")
    size.add_argument("--data", metavar="FILE", help="count the examples of this data file")
    p.add_argument("--epochs", type=float, default=1.0, metavar="N")
    p.add_argument("--lora-rank", type=int, default=16, metavar="R")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="data-parallel GPUs (accelerate/torchrun); memory is per GPU, --batch the global batch")
    p.add_argument("--shard", choices=["none", "fsdp", "zero3"], default="none",
                   help="with --gpus: none = DDP (a full copy per GPU); fsdp / zero3 split weights, gradients "
                        "and optimizer state across the GPUs")
    p.add_argument("--all", action="store_true", help="show every strategy, not the best of each plan")
    p.add_argument("--json", action="store_true", help="machine-readable output (stable schema)")
    p.set_defaults(func=cmd_plan)

    p = _verb(sub, "train", "run Stage A (SFT) or Stage B (DPO) in a session that records, checkpoints and resumes",
              "rounds train dpo --model sessions/SFT_ID/merged --data pairs.jsonl --plan qlora --precompute-ref "
              "--detach",
              "Creates a session folder, checks the model folder and the data before loading anything, and\n"
              "trains with TRL (SFTTrainer / DPOTrainer). Plans: full (DPO: policy + a frozen reference copy),\n"
              "lora (PEFT on all linear layers; DPO's reference is the same weights with adapters off),\n"
              "qlora (4-bit NF4 base + LoRA). Ctrl-C, SIGTERM or SIGHUP save a checkpoint and stop;\n"
              "`rounds resume SESSION` continues. --detach keeps running after the terminal closes.")
    p.add_argument("stage", choices=["sft", "dpo"], help="sft: question/answer data; dpo: prompt/chosen/rejected")
    p.add_argument("--model", required=True, metavar="PATH", help="local model folder (safetensors)")
    p.add_argument("--adapter", metavar="PATH", help="start from this LoRA adapter (e.g. an SFT session's adapter/)")
    p.add_argument("--data", required=True, metavar="FILE", help="training data (see `rounds validate`)")
    p.add_argument("--val", metavar="FILE", help="validation data of the same kind")
    p.add_argument("--plan", choices=["auto", "full", "lora", "qlora"], default="auto",
                   help="training plan; auto (default) takes `rounds plan`'s recommendation")
    p.add_argument("--mem-budget", metavar="SIZE",
                   help="memory the run may use (default: the GPU's memory, or the free RAM on CPU)")
    p.add_argument("--ignore-plan", action="store_true",
                   help="start an explicit plan even when the planner predicts it will not fit")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=1.0, metavar="N", help="passes over the data (default 1)")
    length.add_argument("--max-steps", type=int, default=-1, metavar="N", help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, metavar="X", help="learning rate (default depends on stage and plan)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="micro-batch per step (default 1)")
    p.add_argument("--grad-accum", type=int, default=1, metavar="N", help="gradient accumulation (default 1)")
    p.add_argument("--max-length", type=int, default=512, metavar="N", help="tokens per example (default 512)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precompute-ref", action="store_true",
                   help="DPO: compute reference log-probs once before training (no reference forward per step)")
    p.add_argument("--beta", type=float, default=0.1, metavar="X", help="DPO beta (default 0.1)")
    p.add_argument("--sft-weight", type=float, default=0.0, metavar="W",
                   help="DPO: add W x the NLL of the chosen answers (RPO), so DPO does not simply push both "
                        "answers down (default 0)")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more activation memory")
    p.add_argument("--lora-rank", type=int, default=16, metavar="R")
    p.add_argument("--lora-alpha", type=int, default=32, metavar="A")
    p.add_argument("--save-steps", type=int, default=100, metavar="N", help="checkpoint every N steps (default 100)")
    p.add_argument("--save-minutes", type=float, default=30.0, metavar="M", help="and every M minutes (default 30)")
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="K", help="keep the last K (default 3)")
    p.add_argument("--logging-steps", type=int, default=1, metavar="N", help="a metrics event every N steps")
    p.add_argument("--eval-steps", type=int, metavar="N", help="with --val: evaluate every N steps")
    p.add_argument("--merge", action="store_true", help="also write a merged model folder (next stage's --model)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code")
    p.add_argument("--system-interval", type=float, default=2.0, metavar="S", help="system sample every S seconds")
    for fld in ("question", "answer", "context", "prompt", "chosen", "rejected", "id"):
        p.add_argument(f"--{fld}", dest=f"col_{fld}", metavar="COL", help=argparse.SUPPRESS)
    p.add_argument("--detach", action="store_true", help="run in its own process session; output to run.log")
    p.add_argument("--launcher", choices=["python", "accelerate"], default="python",
                   help="accelerate: run through `accelerate launch`, one process per GPU (or per CPU rank, gloo)")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="with --launcher accelerate: ranks (default: the GPUs torch sees, at least 1)")
    p.add_argument("--accelerate-config", metavar="FILE", help="with --launcher accelerate: an `accelerate config` "
                                                               "file (DDP, FSDP, DeepSpeed); see the README")
    p.add_argument("--prepare-only", action="store_true",
                   help="create the session and print the command to launch its ranks yourself "
                        "(`accelerate launch ... -m engine.train --rank-worker SESSION`)")
    p.add_argument("--name", metavar="NAME", help="session name (letters, digits, . _ -)")
    p.set_defaults(func=cmd_train)

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

    p = _verb(sub, "import-results", "make an eval session from an existing results CSV/JSONL",
              "rounds import-results evaluation_results.csv --question Question --reference gold --answer output")
    p.add_argument("file", metavar="FILE")
    for fld in ("question", "reference", "answer", "context", "id"):
        p.add_argument(f"--{fld}", dest=f"col_{fld}", metavar="COL", help=f"column holding the {fld}")
    p.add_argument("--model-name", metavar="TEXT", help="what produced the answers (recorded)")
    p.add_argument("--held-out", action="store_true", help="mark it a held-out test set")
    p.add_argument("--name", metavar="NAME")
    p.set_defaults(func=cmd_import)

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

    p = _verb(sub, "pairs", "build DPO triplets: from marked answers, a dataset's columns, labelled statements, "
                            "or the model's own samples",
              "rounds pairs ROUND_ID --out data/pairs.jsonl --refusal \"I don't know {drug}.\"\n"
              "  rounds pairs --from-columns medhallu.csv --prompt question --context knowledge "
              "--chosen ground_truth \\\n"
              "      --rejected hallucinated_answer --out data/medhallu --exclude test.jsonl\n"
              "  rounds pairs --from-labels medhal.csv --group context --text statement --label label \\\n"
              "      --prompt-template \"Read this:\\n{context}\\nState one fact it supports.\" --out data/medhal\n"
              "  rounds pairs --from-samples --model sessions/SFT_ID/merged --data sft_train.jsonl --samples 4 "
              "--out data/samples",
              "Four sources, one at a time:\n"
              "  SESSION ...     answers judged by hand or by `assess --auto` (chosen = reference, rejected = the\n"
              "                  answer judged hallucinated); --out FILE.jsonl, FILE.val.jsonl gets the rest\n"
              "  --from-columns  a file with a question, a correct and a hallucinated answer per row (MedHallu)\n"
              "  --from-labels   statements labelled factual / not factual sharing a group (MedHal): a factual and\n"
              "                  a non-factual statement of one group make a pair; the prompt is --prompt-template\n"
              "                  over the group's row (default: the group column itself)\n"
              "  --from-samples  N sampled answers per question from your model (an eval session: resumable, and\n"
              "                  `rounds assess`-able), judged against the reference; a faithful answer is chosen\n"
              "                  over a hallucinated one, the reference when no sample is faithful\n"
              "The last three write --out DIR/train_dpo.jsonl and val_dpo.jsonl (split by question: never one\n"
              "question in both), pairs_sources.jsonl (the source rows of every pair) and pairs_report.json/.md\n"
              "(counts, drops and why, length ratios). They stream: a file of any size is read once, and spilled\n"
              "to disk by question, never held whole. A row that cannot be read is reported by line and skipped.")
    p.add_argument("session_refs", metavar="SESSION", nargs="*", help="eval sessions whose marks make the pairs")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="FILE.jsonl for SESSION pairs; a folder for the --from-* sources")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="held back for validation, by question (default 0.1 for SESSION, 0.18 for --from-*)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--annotator", metavar="NAME", help="use this annotator's marks (default: the consensus)")
    g = p.add_argument_group("from marked sessions")
    g.add_argument("--allow-test-items", action="store_true", help="allow items of held-out test sessions")
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

    p = _verb(sub, "watch", "open the Monitor on a run: progress, ETA, memory, GPU/CPU, loss and rewards, events",
              "rounds watch 20261128-021500-train-sft-demo",
              "Without SESSION: the latest running run, else the latest session. `q` leaves the console,\n"
              "never the run; `c` asks for a checkpoint, `s` stops the run gracefully (after a confirmation).")
    p.add_argument("session", metavar="SESSION", nargs="?")
    p.set_defaults(func=cmd_watch)

    p = _verb(sub, "resume", "continue a stopped or failed training run from its last complete checkpoint",
              "rounds resume 20261128-021500-train-sft-demo --detach",
              "Restores weights or adapter, optimizer, scheduler, RNG and step from the newest complete\n"
              "checkpoint and continues the same session (its events.jsonl goes on). A run with no\n"
              "checkpoint yet starts again from the beginning.")
    p.add_argument("session", metavar="SESSION", help="session id or folder")
    p.add_argument("--detach", action="store_true", help="run in its own process session")
    p.set_defaults(func=cmd_resume)
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
    from engine.data import format_report, load_tokenizer_folder, token_stats, validate_file

    fields = ("question", "answer", "context", "reference", "prompt", "chosen", "rejected", "id")
    columns = {f: getattr(args, f) for f in fields if getattr(args, f)}
    report = validate_file(args.file, args.kind, columns)
    if args.model and report.rows:
        token_stats(report, load_tokenizer_folder(args.model), args.max_length)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    else:
        sys.stdout.write(format_report(report, args.max_problems))
    return 0 if report.ok else 1


def _session_path(args: argparse.Namespace, ref: str) -> Path:
    """A session given by id (under the sessions root) or by path."""
    from engine.session import sessions_root

    p = Path(ref)
    if (p / "session.json").is_file():
        return p
    candidate = sessions_root(args.sessions) / ref
    if (candidate / "session.json").is_file():
        return candidate
    raise UserError(f"no session {ref!r} (looked in {sessions_root(args.sessions)})",
                    hint="give a session id from `ls sessions/` or a session folder path")


def _announce(writer, proc, detach: bool, verb: str = "started") -> None:
    path = writer.path
    print(f"rounds: {verb} session {writer.id} (pid {proc.pid})")
    print(f"  folder : {path}")
    print(f"  log    : tail -f {path / 'run.log'}")
    if detach:
        print(f"  it runs on after this terminal closes; to stop it with a checkpoint: kill -TERM {proc.pid}")
    print(f"  resume : rounds resume {writer.id}" + (f" --sessions {path.parent}" if path.parent.name != "sessions"
                                                        else ""), flush=True)


def cmd_plan(args: argparse.Namespace) -> int:
    from engine import plan as pl
    from engine.shapes import ModelShape, read_config

    shape = ModelShape.from_config(read_config(args.model))
    examples, lengths = args.examples, None
    if args.data:
        from engine.data import example_lengths, load

        rows = load(args.data, args.stage)
        examples = len(rows)
        if Path(args.model).is_dir():
            lengths = example_lengths(args.model, rows, args.stage)
    budget = pl.parse_size(args.gpu_mem) if args.gpu_mem else None
    device = pl.cuda_device(budget, name=f"GPU with {args.gpu_mem}") if budget else pl.detect_device(args.device)
    work = pl.Workload(args.stage, args.max_length, max(1, args.batch), examples, args.epochs, args.lora_rank,
                       gpus=args.gpus, shard=args.shard, lengths=lengths)
    result = pl.plan(shape, work, device)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return 0 if result.recommended else 1
    print(format_plan(result, args.model, show_all=args.all))
    return 0 if result.recommended else 1


def format_plan(result, model: str, show_all: bool = False) -> str:
    from engine.units import format_seconds, human_bytes

    w, d, shape = result.workload, result.device, result.shape
    lines = []
    size = f"{w.examples:,} {'pairs' if w.stage == 'dpo' else 'examples'} x {w.epochs:g} epoch" if w.examples else \
        "no data size given (--pairs N or --data FILE for a total)"
    lines.append(f"{model}: {shape.describe()}")
    lines.append(f"{w.stage.upper()} on {d.name or d.kind}: {human_bytes(d.budget_bytes)}, "
                 f"{human_bytes(result.usable_bytes)} usable ({d.margin:.0%} kept free); max length {w.max_length}, "
                 f"batch {w.batch}, {size}")
    if w.lengths:
        seen = w.summary()["lengths"]
        lines.append(f"lengths from the data ({seen['examples_sampled']:,} examples' tokens): longest "
                     f"{seen['longest']}, median {seen['median']}; memory for the longest, time for "
                     f"the typical padded batch")
    else:
        lines.append(f"every example taken as {w.max_length} tokens (give --data FILE with a model folder "
                     "for the data's own lengths)")
    if w.gpus > 1:
        from engine.plan import INTERCONNECT_BYTES_PER_SECOND, SHARDING

        lines.append(f"x{w.gpus} GPUs, {SHARDING[w.shard]}; memory is per GPU, time includes "
                     f"{INTERCONNECT_BYTES_PER_SECOND / 1e9:.0f} GB/s communication (assumed)")
    if show_all:
        rows = result.strategies
    else:  # per plan and reference choice: the fastest that fits, else the smallest
        groups: dict = {}
        for r in result.strategies:
            groups.setdefault((r.strategy.plan, r.strategy.precompute_ref), []).append(r)
        rows = []
        for group in groups.values():
            fit = [r for r in group if r.fits]
            rows.append(min(fit, key=lambda r: r.seconds_per_step) if fit else min(group, key=lambda r: r.peak_bytes))
    lines.append(f"  {'strategy':<20}{'peak':>10}  {'fits':<5}{'s/step':>9}{'total':>9}  why")
    for r in rows:
        mark = "*" if r is result.recommended else " "
        lines.append(f"{mark} {r.strategy.name:<20}{human_bytes(r.peak_bytes):>10}  {'yes' if r.fits else 'no':<5}"
                     f"{format_seconds(r.seconds_per_step):>9}{format_seconds(r.total_seconds):>9}  {r.why}")
    if result.recommended:
        rec = result.recommended
        c = rec.components
        parts = ", ".join(f"{k.replace('_', ' ')} {human_bytes(v)}" for k, v in c.items() if v)
        lines.append(f"recommended: {rec.strategy.name} (gradient checkpointing "
                     f"{'on' if rec.strategy.gradient_checkpointing else 'off'}): {parts}")
        flag = f"--plan {rec.strategy.plan}" + (" --precompute-ref" if rec.strategy.precompute_ref else "")
        accum = max(1, -(-w.batch // (rec.strategy.micro_batch * w.gpus)))
        lines.append(f"  train it with: rounds train {w.stage} {flag} --batch {rec.strategy.micro_batch} "
                     f"--grad-accum {accum}" + (f"   (per GPU, {w.gpus} processes)" if w.gpus > 1 else
                                                "   (or --plan auto)"))
        if result.note:
            lines.append(f"  note: {result.note}")
    else:
        lines.append("nothing fits this budget: shorten --max-length, or use a bigger device")
    from engine.plan import time_uncertainty

    lines.append(f"times: {time_uncertainty(d)}")
    return "\n".join(lines)


def _num_processes(args: argparse.Namespace) -> int:
    if args.launcher != "accelerate":
        if args.num_processes not in (None, 1) or args.accelerate_config:
            raise UserError("--num-processes and --accelerate-config need --launcher accelerate",
                            field="--launcher", hint="add --launcher accelerate")
        return 1
    if args.accelerate_config and not Path(args.accelerate_config).is_file():
        raise UserError(f"{args.accelerate_config}: no such file", field="--accelerate-config",
                        hint="write one with `accelerate config --config_file FILE`, or use the README's")
    if args.num_processes is not None:
        if args.num_processes < 1:
            raise UserError("--num-processes must be at least 1", field="--num-processes")
        return args.num_processes
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:  # pragma: no cover
        return 1


def cmd_train(args: argparse.Namespace) -> int:
    from engine.recipe import TrainSpec
    from engine.session import sessions_root
    from engine.train import follow, start

    if args.stage == "sft" and (args.precompute_ref or args.col_prompt or args.col_chosen or args.col_rejected):
        raise UserError("--precompute-ref and --prompt/--chosen/--rejected are for `rounds train dpo`")
    fields = ("question", "answer", "context", "prompt", "chosen", "rejected", "id")
    spec = TrainSpec(
        stage=args.stage, model=args.model, data=args.data, val=args.val, adapter=args.adapter, plan=args.plan,
        epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch=args.batch, grad_accum=args.grad_accum,
        max_length=args.max_length, device=args.device, precompute_ref=args.precompute_ref, beta=args.beta,
        sft_weight=args.sft_weight,
        gradient_checkpointing=not args.no_gradient_checkpointing, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, save_steps=args.save_steps, save_minutes=args.save_minutes,
        keep_checkpoints=args.keep_checkpoints, logging_steps=args.logging_steps, eval_steps=args.eval_steps,
        merge=args.merge, seed=args.seed, trust_remote_code=args.trust_remote_code,
        system_interval=args.system_interval,
        columns={f: getattr(args, f"col_{f}") for f in fields if getattr(args, f"col_{f}")},
        launcher=args.launcher, num_processes=_num_processes(args),
        accelerate_config=str(Path(args.accelerate_config).resolve()) if args.accelerate_config else None,
    )
    from engine.plan import parse_size
    from engine.units import human_bytes

    budget = parse_size(args.mem_budget, "--mem-budget") if args.mem_budget else None
    writer, proc = start(spec, sessions_root(args.sessions), name=args.name, shared=args.shared_sessions,
                         detach=args.detach, command=["rounds", *sys.argv[1:]], budget_bytes=budget,
                         ignore_plan=args.ignore_plan, spawn=not args.prepare_only)
    plan = writer.meta["plan"]
    print(f"rounds: plan {plan['name']}{' +precompute-ref' if plan['precompute_ref'] else ''}, micro-batch "
          f"{plan['micro_batch']} x {plan['grad_accum']}, gradient checkpointing "
          f"{'on' if plan['gradient_checkpointing'] else 'off'} ({plan['chosen_by']}); predicted peak "
          f"{human_bytes(plan['predicted_peak_bytes'])} of {human_bytes(plan['usable_bytes'])} usable")
    if proc is None:  # --prepare-only: the user launches the ranks
        print(f"rounds: session {writer.id} is ready; start its ranks yourself, e.g.\n"
              f"  accelerate launch --num_processes N [your options] -m engine.train --rank-worker {writer.path}\n"
              f"  (rank 0 writes the session; without rounds' supervisor a dead rank is not named and an\n"
              f"  out-of-memory rank is not relaunched: `--launcher accelerate` does both)")
        return 0
    _announce(writer, proc, args.detach)
    if args.detach:
        return 0
    return _finish(writer.path, follow(proc, writer.path / "run.log"))


def _finish(session: Path, code: int) -> int:
    """After a foreground run: say plainly how it ended (stderr when it failed)."""
    from engine.session import read_session_json

    meta = read_session_json(session)
    if meta.get("status") == "failed":
        print(f"rounds: error: run {meta['id']} failed: {meta.get('error')}\n"
              f"  details: {session / 'run.log'}", file=sys.stderr)
        return code or 1
    return code


def cmd_resume(args: argparse.Namespace) -> int:
    from engine.train import follow, resume

    writer, proc = resume(_session_path(args, args.session), detach=args.detach)
    _announce(writer, proc, args.detach, verb="resumed")
    if args.detach:
        return 0
    return _finish(writer.path, follow(proc, writer.path / "run.log"))


def _cols(args: argparse.Namespace, fields: tuple[str, ...]) -> dict[str, str]:
    return {f: getattr(args, f"col_{f}") for f in fields if getattr(args, f"col_{f}", None)}


def cmd_demo(args: argparse.Namespace) -> int:
    from engine import demo
    from engine.session import list_sessions, sessions_root

    root = sessions_root(args.sessions)
    cfg = demo.DemoConfig.quick() if args.quick else demo.DemoConfig()
    t = time.perf_counter()
    print(f"rounds demo: preparing the {cfg.size} demo model (built once, then cached in {demo.cache_dir()}) …",
          flush=True)
    model = demo.demo_model(cfg.size)
    print(f"rounds demo: model ready in {time.perf_counter() - t:.1f} s: {model}", flush=True)
    tui = not args.no_tui and sys.stdout.isatty()
    if args.pipeline and not tui:
        summary = demo.run_pipeline(root, cfg, echo=lambda m: print(m, flush=True))
        return 0 if summary else 1
    before = {i.id for i in list_sessions(root)}
    proc = demo.start_pipeline_background(root, quick=args.quick, full=args.pipeline)
    print(f"rounds demo: started in the background (pid {proc.pid}, log {root / 'demo.log'}); sessions in {root}",
          flush=True)
    deadline = time.monotonic() + 120
    session = None
    while time.monotonic() < deadline and session is None:
        if proc.poll() is not None and proc.returncode != 0:
            raise UserError(f"the demo stopped before its first run started (exit {proc.returncode})",
                            hint=f"see {root / 'demo.log'}")
        new = [i for i in list_sessions(root) if i.id not in before and i.kind == "train"]
        session = new[0].path if new else None
        time.sleep(0.3)
    if session is None:
        raise UserError("the demo's first run did not start within 2 minutes", hint=f"see {root / 'demo.log'}")
    if not tui:
        print(f"rounds demo: training run {session.name} started; watch it with `rounds watch {session.name}`, "
              f"then assess the evaluation it is followed by with `rounds` (Home)")
        return 0
    from console.app import run_console

    return run_console(root, session, follow_demo=proc.pid if args.pipeline else None)


def cmd_home(args: argparse.Namespace) -> int:
    from console.app import run_console
    from engine.session import sessions_root

    return run_console(sessions_root(args.sessions))


def cmd_watch(args: argparse.Namespace) -> int:
    from console.app import run_console
    from engine.session import list_sessions, sessions_root

    root = sessions_root(args.sessions)
    if args.session:
        session = _session_path(args, args.session)
    else:
        infos = [i for i in list_sessions(root) if i.status != "unreadable"]
        running = [i for i in infos if i.effective_status == "running"]
        if not infos:
            raise UserError(f"no sessions in {root}", hint="start one with `rounds train` or `rounds eval`")
        session = (running or infos)[0].path
    return run_console(root, session)


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
    from engine.evaluate import read_results

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


def cmd_import(args: argparse.Namespace) -> int:
    from engine.evaluate import import_results
    from engine.session import sessions_root

    writer = import_results(args.file, _cols(args, ("question", "reference", "answer", "context", "id")),
                            sessions_root(args.sessions), name=args.name, shared=args.shared_sessions,
                            command=["rounds", *sys.argv[1:]], model=args.model_name, held_out=args.held_out)
    print(f"rounds: imported {writer.meta['items']} results into session {writer.id}\n"
          f"  assess them by hand: rounds assess {writer.id}   (or automatically: --auto contains)")
    return 0


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


def cmd_pairs(args: argparse.Namespace) -> int:
    sources = [n for n, on in (("SESSION", bool(args.session_refs)), ("--from-columns", args.from_columns),
                               ("--from-labels", args.from_labels), ("--from-samples", args.from_samples)) if on]
    if len(sources) != 1:
        raise UserError("give one source: " + (" and ".join(sources) + " both given" if sources else "none given"),
                        hint="SESSION ..., --from-columns FILE, --from-labels FILE or --from-samples")
    if args.session_refs:
        return _pairs_from_marks(args)
    from engine import pairs
    from engine.session import sessions_root

    opts = pairs.PairOptions(out=args.out, val_fraction=0.18 if args.val_fraction is None else args.val_fraction,
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
    _print_pairs_report(rep)
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


def _print_pairs_report(rep: dict) -> None:
    print(f"rounds: {rep['train_pairs']:,} training pairs in {rep['train']}, {rep['val_pairs']:,} in {rep['val']} "
          f"({rep['train_groups']:,} / {rep['val_groups']:,} {'groups' if rep['mode'] == 'labels' else 'questions'})")
    print(f"  source rows: {rep['source_rows']['read']:,} read, {rep['source_rows']['used']:,} used")
    if rep["dropped"]:
        print("  dropped: " + ", ".join(f"{k} {v:,}" for k, v in rep["dropped"].items()))
    for k, v in (rep.get("chosen_from") or {}).items():
        print(f"  {k}: {v:,}")
    r = rep["chosen_rejected_length_ratio"]
    if r:
        print(f"  chosen/rejected length ratio: median {r['median']}, p5 {r['p5']}, p95 {r['p95']}")
    if rep.get("warning"):
        print(f"  warning: {rep['warning']}")
    if rep["problems_total"]:
        print(f"  {rep['problems_total']:,} source row(s) could not be read and were skipped; the first:")
        for line in rep["problems"][:5]:
            print("    " + line.replace("\n", "\n    "))
    print(f"  report: {Path(rep['out']) / 'pairs_report.md'}" + (f"   session: {rep['session']}" if rep['session']
                                                                 else ""))


def _pairs_from_marks(args: argparse.Namespace) -> int:
    from engine.report import make_pairs

    sessions = [_session_path(args, s) for s in args.session_refs]
    rep = make_pairs(sessions, Path(args.out), 0.1 if args.val_fraction is None else args.val_fraction,
                     args.annotator, args.allow_test_items, args.seed, args.refusal, args.exclude)
    print(f"rounds: {rep['train_pairs']} training pairs in {rep['train']}, {rep['val_pairs']} in {rep['val']}"
          + (f"; dropped: {', '.join(f'{k} {v}' for k, v in rep['dropped'].items())}" if rep["dropped"] else ""))
    ratio = rep["chosen_rejected_length_ratio"]
    print(f"  chosen/rejected length ratio: mean {ratio['mean']}, min {ratio['min']}, max {ratio['max']}")
    if rep.get("warning"):
        print(f"  warning: {rep['warning']}")
    return 0


# --------------------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        if not sys.stdout.isatty():  # no terminal to draw on: say what there is instead
            parser.print_help()
            return 0
        args.func = cmd_home
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
