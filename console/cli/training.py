"""`rounds` verbs. Training: planning memory and time, training a stage, resuming a run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from console.cli.common import POSITIVE, POSITIVE_NUMBER, _session_path, _verb
from console.cli.data import _data_fields, _data_kinds
from engine.errors import UserError
from engine.session.layout import RUN_LOG


def add_verbs(sub) -> None:
    p = _verb(sub, "plan", "predict peak memory and time of a training stage's strategies from config.json alone",
              "rounds plan --model models/llama-2-7b/config.json --stage dpo --gpu-mem 12GiB --pairs 8484",
              "Reads only the model's config.json (no weights) and predicts, for each strategy (full, lora,\n"
              "qlora; with and without precomputed reference log-probs and gradient checkpointing; micro-batch\n"
              "1..--batch), the peak memory by component and the time per step and in total. Says which fit\n"
              "the budget (10% kept free) and why the others don't, and recommends the fastest that fits.")
    p.add_argument("--model", required=True, metavar="PATH", help="a model folder or its config.json")
    p.add_argument("--stage", choices=_stage_names(), required=True)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--gpu-mem", metavar="SIZE", help="plan for a GPU with this much memory (12GiB, 16GB, ...)")
    budget.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="plan for this machine's GPU (auto) or its CPU and free RAM")
    p.add_argument("--max-length", type=POSITIVE, default=1024, metavar="N", help="tokens per example (default 1024)")
    p.add_argument("--batch", type=POSITIVE, default=1, metavar="N",
                   help="effective batch; micro-batches 1..N are tried")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--pairs", "--examples", type=POSITIVE, dest="examples", metavar="N", help="training examples")
    size.add_argument("--data", metavar="FILE", help="count the examples of this data file")
    p.add_argument("--epochs", type=POSITIVE_NUMBER, default=1.0, metavar="N")
    p.add_argument("--lora-rank", type=POSITIVE, default=16, metavar="R")
    p.add_argument("--gpus", type=POSITIVE, default=1, metavar="N",
                   help="data-parallel GPUs (accelerate/torchrun); memory is per GPU, --batch the global batch")
    p.add_argument("--shard", choices=["none", "fsdp", "zero3"], default="none",
                   help="with --gpus: none = DDP (a full copy per GPU); fsdp / zero3 split weights, gradients "
                        "and optimizer state across the GPUs")
    p.add_argument("--assume-generic", action="store_true",
                   help="recommend a plan for an architecture rounds only estimates (a Llama-style guess)")
    p.add_argument("--refresh-probe", action="store_true",
                   help="measure this machine's matmul throughput again (it is cached, and re-taken by itself "
                        "after 7 days, on another machine, or when it was taken on a busy one)")
    p.add_argument("--all", action="store_true", help="show every strategy, not the best of each plan")
    p.add_argument("--json", action="store_true", help="machine-readable output (stable schema)")
    p.set_defaults(func=cmd_plan)

    p = _verb(sub, "train", "run a training stage (SFT, DPO, KTO) in a session that records, checkpoints and resumes",
              "rounds train dpo --model sessions/SFT_ID/merged --data pairs.jsonl --plan qlora --precompute-ref "
              "--detach",
              "Creates a session folder, checks the model folder and the data before loading anything, and\n"
              "trains with TRL. Stages:\n" + _stages_help() + "\nPlans:\n" + _methods_help() + "\n"
              "Ctrl-C, SIGTERM or SIGHUP save a checkpoint and stop; `rounds resume SESSION` continues.\n"
              "--detach keeps running after the terminal closes.")
    p.add_argument("stage", choices=_stage_names(), help="; ".join(f"{n}: {_stage(n).help}" for n in _stage_names()))
    p.add_argument("--model", required=True, metavar="PATH", help="local model folder (safetensors)")
    p.add_argument("--adapter", metavar="PATH", help="start from this LoRA adapter (e.g. an SFT session's adapter/)")
    p.add_argument("--data", required=True, metavar="FILE", help="training data (see `rounds validate`)")
    p.add_argument("--val", metavar="FILE", help="validation data of the same kind")
    p.add_argument("--plan", choices=_plan_choices(), default="auto",
                   help="training plan; auto (default) takes `rounds plan`'s recommendation")
    p.add_argument("--mem-budget", metavar="SIZE",
                   help="memory the run may use (default: the GPU's memory, or the free RAM on CPU)")
    p.add_argument("--assume-generic", action="store_true",
                   help="--plan auto for an architecture the planner only estimates (Llama-style layers)")
    p.add_argument("--ignore-plan", action="store_true",
                   help="start an explicit plan even when the planner predicts it will not fit")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=POSITIVE_NUMBER, default=1.0, metavar="N",
                        help="passes over the data (default 1)")
    length.add_argument("--max-steps", type=POSITIVE, default=-1, metavar="N",
                        help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=POSITIVE_NUMBER, metavar="X", help="learning rate (default depends on stage and plan)")
    p.add_argument("--batch", type=POSITIVE, default=None, metavar="N",
                   help="micro-batch per step (default: the stage's least, 1; KTO 2)")
    p.add_argument("--grad-accum", type=POSITIVE, default=1, metavar="N", help="gradient accumulation (default 1)")
    p.add_argument("--max-length", type=POSITIVE, default=512, metavar="N", help="tokens per example (default 512)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precompute-ref", action="store_true",
                   help="stages with a reference (" + ", ".join(n for n in _stage_names()
                                                                 if _stage(n).factors.reference)
                        + "): compute its log-probs once before training (no reference forward per step)")
    for opt, _takers in _stage_options().values():
        p.add_argument(opt.flag, dest=f"opt_{opt.name}", type=opt.type, default=None, metavar="X", help=opt.help)
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more activation memory")
    p.add_argument("--lora-rank", type=POSITIVE, default=16, metavar="R")
    p.add_argument("--lora-alpha", type=POSITIVE, default=32, metavar="A")
    p.add_argument("--save-steps", type=POSITIVE, default=100, metavar="N",
                   help="checkpoint every N steps (default 100)")
    p.add_argument("--save-minutes", type=POSITIVE_NUMBER, default=30.0, metavar="M",
                   help="and every M minutes (default 30)")
    p.add_argument("--keep-checkpoints", type=POSITIVE, default=3, metavar="K", help="keep the last K (default 3)")
    p.add_argument("--logging-steps", type=POSITIVE, default=1, metavar="N", help="a metrics event every N steps")
    p.add_argument("--eval-steps", type=POSITIVE, metavar="N", help="with --val: evaluate every N steps")
    p.add_argument("--merge", action="store_true", help="also write a merged model folder (next stage's --model)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--report-to", metavar="TRACKER", action="append", default=[],
                   help="also log to this tracker, as the trainer does (tensorboard, wandb, mlflow, ...; "
                        "repeat for more). The session folder stays the record; TensorBoard's files go into "
                        "SESSION/tensorboard")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code")
    p.add_argument("--system-interval", type=POSITIVE_NUMBER, default=2.0, metavar="S",
                   help="system sample every S seconds")
    for fld in _data_fields(exclude=("reference",)):
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
                        "(`accelerate launch ... -m engine.run.rank SESSION`)")
    p.add_argument("--name", metavar="NAME", help="session name (letters, digits, . _ -)")
    p.set_defaults(func=cmd_train)

    p = _verb(sub, "resume", "continue a stopped or failed training run from its last complete checkpoint",
              "rounds resume 20261128-021500-train-sft-demo --detach",
              "Restores weights or adapter, optimizer, scheduler, RNG and step from the newest complete\n"
              "checkpoint and continues the same session (its events.jsonl goes on). A run with no\n"
              "checkpoint yet starts again from the beginning.")
    p.add_argument("session", metavar="SESSION", help="session id or folder")
    p.add_argument("--detach", action="store_true", help="run in its own process session")
    p.set_defaults(func=cmd_resume)


def _stage_names() -> list[str]:
    from engine import stages

    return stages.names()


def _stage(name: str):
    from engine import stages

    return stages.get(name)


def _stage_options() -> dict:
    from engine import stages

    return stages.all_options()


def _stages_help() -> str:
    return "\n".join(f"  {n:<6} {_stage(n).help}" for n in _stage_names())


def _plan_choices() -> list[str]:
    from engine.methods import PLAN_CHOICES

    return list(PLAN_CHOICES)


def _methods_help() -> str:
    from engine.methods import METHODS

    return "\n".join(f"  {m.name:<6} {m.help}" for m in METHODS.values()) + \
        "\n  auto   (default) the planner's recommendation: the fastest that fits (`rounds plan`)"


def cmd_plan(args: argparse.Namespace) -> int:
    from engine import plan as pl
    from engine.shapes import read_shape

    shape = read_shape(args.model)
    examples, lengths = args.examples, None
    if args.data:
        from engine.data import example_lengths, load

        kind = _stage(args.stage).data_kind
        rows = load(args.data, kind)
        examples = len(rows)
        if Path(args.model).is_dir():
            lengths = example_lengths(args.model, rows, kind)
    budget = pl.parse_size(args.gpu_mem) if args.gpu_mem else None
    device = pl.cuda_device(budget, name=f"GPU with {args.gpu_mem}") if budget else \
        pl.detect_device(args.device, refresh=args.refresh_probe)
    work = pl.Workload(args.stage, args.max_length, max(1, args.batch), examples, args.epochs, args.lora_rank,
                       gpus=args.gpus, shard=args.shard, lengths=lengths)
    result = pl.plan(shape, work, device, assume_generic=args.assume_generic)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return 0 if result.recommended else 1
    print(result.table(args.model, show_all=args.all))
    return 0 if result.recommended else 1


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
    from engine.run.launch import describe_plan, follow, start
    from engine.session import sessions_root

    stage = _stage(args.stage)
    kind = _data_kinds()[stage.data_kind]
    columns = {f: getattr(args, f"col_{f}") for f in _data_fields(exclude=("reference",))
               if getattr(args, f"col_{f}")}
    foreign = [f for f in columns if f not in kind.required + kind.optional]
    if foreign:
        raise UserError(f"--{foreign[0]} is not a field of {args.stage} data", field=f"--{foreign[0]}",
                        hint=f"{args.stage} data has: {', '.join(kind.required + kind.optional)}")
    if args.precompute_ref and not stage.factors.reference:
        raise UserError(f"--precompute-ref: `rounds train {args.stage}` has no reference model",
                        field="--precompute-ref",
                        hint="it is for " + ", ".join(f"`rounds train {n}`" for n in _stage_names()
                                                       if _stage(n).factors.reference))
    own = {o.name for o in stage.options}
    options = {}
    for name, (opt, takers) in _stage_options().items():
        value = getattr(args, f"opt_{name}")
        if value is None:
            continue
        if name not in own:
            raise UserError(f"{opt.flag} is for {', '.join(f'`rounds train {t}`' for t in takers)}", field=opt.flag)
        options[name] = value
    batch = args.batch if args.batch is not None else stage.min_micro_batch
    spec = TrainSpec(
        stage=args.stage, model=args.model, data=args.data, val=args.val, adapter=args.adapter, plan=args.plan,
        epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch=batch, grad_accum=args.grad_accum,
        max_length=args.max_length, device=args.device, precompute_ref=args.precompute_ref, options=options,
        gradient_checkpointing=not args.no_gradient_checkpointing, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, save_steps=args.save_steps, save_minutes=args.save_minutes,
        keep_checkpoints=args.keep_checkpoints, logging_steps=args.logging_steps, eval_steps=args.eval_steps,
        merge=args.merge, seed=args.seed, trust_remote_code=args.trust_remote_code,
        system_interval=args.system_interval,
        columns=columns,
        launcher=args.launcher, num_processes=_num_processes(args),
        accelerate_config=str(Path(args.accelerate_config).resolve()) if args.accelerate_config else None,
        assume_generic=args.assume_generic,
        report_to=[t for arg in args.report_to for t in arg.split(",") if t],
    )
    from engine.plan import parse_size

    budget = parse_size(args.mem_budget, "--mem-budget") if args.mem_budget else None
    writer, proc = start(spec, sessions_root(args.sessions), name=args.name, shared=args.shared_sessions,
                         detach=args.detach, command=["rounds", *sys.argv[1:]], budget_bytes=budget,
                         ignore_plan=args.ignore_plan, spawn=not args.prepare_only)
    print(f"rounds: {describe_plan(writer.meta['plan'])}")
    if proc is None:  # --prepare-only: the user launches the ranks
        print(f"rounds: session {writer.id} is ready; start its ranks yourself, e.g.\n"
              f"  accelerate launch --num_processes N [your options] -m engine.run.rank {writer.path}\n"
              f"  (rank 0 writes the session; without rounds' supervisor a dead rank is not named and an\n"
              f"  out-of-memory rank is not relaunched: `--launcher accelerate` does both)")
        return 0
    _announce(writer, proc, args.detach)
    if args.detach:
        return 0
    return _finish(writer.path, follow(proc, writer.path / RUN_LOG))


def _announce(writer, proc, detach: bool, verb: str = "started") -> None:
    path = writer.path
    print(f"rounds: {verb} session {writer.id} (pid {proc.pid})")
    print(f"  folder : {path}")
    print(f"  log    : tail -f {path / 'run.log'}")
    if detach:
        print(f"  it runs on after this terminal closes; to stop it with a checkpoint: kill -TERM {proc.pid}")
    print(f"  resume : rounds resume {writer.id}" + (f" --sessions {path.parent}" if path.parent.name != "sessions"
                                                        else ""), flush=True)


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
    from engine.run.launch import follow, resume

    session = _session_path(args, args.session)
    log = session / RUN_LOG
    start = log.stat().st_size if log.is_file() else 0  # the log so far is not shown again
    writer, proc = resume(session, detach=args.detach)
    _announce(writer, proc, args.detach, verb="resumed")
    if args.detach:
        return 0
    if start:
        print(f"rounds: the run's log so far is in {log}; from here on, the resumed run:", flush=True)
    return _finish(writer.path, follow(proc, log, start=start))
