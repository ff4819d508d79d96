"""The demo: the whole SFT → evaluate → assess → pairs → DPO → evaluate → compare loop on this CPU.

The bundled fictional-drug data makes hallucination measurable automatically: the test set
asks about drugs the SFT data taught (answerable) and about drug names that appear in no
training file, whose faithful answer is an abstention. The ``abstain`` judge marks each
answer against its reference; DPO pairs built from the marks of a separate assessment round
(every SFT question about the known drugs, and questions about other unseen drugs) teach the
model to abstain on what it doesn't know and keep answering what it does.

``python -m engine.demo ROOT`` runs what ``ROOT/demo-request.json`` asks for (``full``: the
whole loop, the default; else its first stage; ``quick``: a tiny model); the ``rounds demo``
verb writes that file, starts it (detached) and opens the console, which follows it
(``demo-state.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.errors import UserError
from engine.session.layout import METRICS

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"


@dataclass
class DemoConfig:
    size: str = "small"
    sft_epochs: float = 24.0
    sft_lr: float = 1e-3
    sft_batch: int = 32
    # Full-parameter DPO: abstaining on names never seen generalises only with a strong push
    # (a gentler run, beta 0.3 at 2e-5 for 4 epochs, abstained on none); what SFT taught is
    # kept by the round's "keep answering" pairs for every SFT question (see demo_data).
    dpo_epochs: float = 4.0
    dpo_lr: float = 5e-5
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 1.0  # RPO: keep the chosen answers likely, not only the margin
    dpo_batch: int = 8
    max_new_tokens: int = 40
    max_length: int = 128
    seed: int = 0  # the model's initial weights, the data order and the sampling
    # Full-parameter DPO with the reference log-probs computed once: on this from-scratch
    # 25 M model, LoRA adapters learned the training pairs but not to abstain on names
    # they never saw (0/30 in every LoRA run); full-parameter DPO did.
    dpo_plan: str = "full"
    dpo_precompute_ref: bool = True
    judge: str = "abstain"  # marks the round (pairs) and both test evaluations (the comparison)
    # sampled answers kept beside each test answer, for the consistency judge; chosen on the
    # assessment round (not the test set): AUROC 0.84 with 4 samples, 0.86 with 8; T 0.7 / 1.3 worse
    check_samples: int = 8
    check_temperature: float = 1.0

    @classmethod
    def quick(cls) -> DemoConfig:
        """A CI-sized loop: every stage runs and writes its artefacts; no efficacy expected."""
        return cls(size="tiny", sft_epochs=1, sft_batch=16, dpo_epochs=1, dpo_batch=8, max_new_tokens=8,
                   check_samples=2)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.environ.get("ROUNDS_CACHE") or Path(base) / "rounds")


def demo_model(size: str = "small", seed: int = 0) -> Path:
    """The demo's model folder, built once and cached (a second start is instant)."""
    import hashlib

    from engine.tinymodel import build_tiny_model

    # the tokenizer is trained on the demo text: a change of data means a new model
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(DEMO_DATA.glob("*.jsonl")))).hexdigest()[:8]
    path = cache_dir() / "models" / f"demo-{size}-seed{seed}-{digest}"
    if not (path / "rounds_tiny_model.json").is_file():
        build_tiny_model(path, size=size, seed=seed, force=True)
    return path


STATE = "demo-state.json"  # the pipeline's stage and sessions, for the console that follows it


def _write_state(root: Path, **fields) -> None:
    """Where the pipeline is, so that a console following it can show the running stage and
    end on the comparison; keyed by this process so that two demos in one root stay apart."""
    from engine.session import write_json_atomic

    path = root / STATE
    try:
        state = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        state = {}
    if state.get("pid") != os.getpid():
        state = {"pid": os.getpid(), "started": time.time()}
    state.update(fields, updated=time.time())
    write_json_atomic(path, state)


def _follow(session: Path, name: str, proc, echo, every: float = 15.0) -> int:
    """Wait for a run, printing its step, loss and ETA every ``every`` seconds (no silent minutes)."""
    from engine.session import EventTail
    from engine.units import format_duration

    tail = EventTail(session / "events.jsonl")
    last: dict = {}
    next_print = time.monotonic() + every
    while True:
        code = proc.poll()
        for raw in tail.read_lines():
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and rec.get("type") == METRICS and "loss" in rec:
                last = rec
        if code is not None:
            return code
        if time.monotonic() >= next_print and last:
            eta = last.get("eta_seconds")
            echo(f"[demo] {name}: step {last.get('step')}/{last.get('max_steps')}, loss {last['loss']:.3f}"
                 + (f", {last['seconds_per_step']:.2f} s/step" if last.get("seconds_per_step") else "")
                 + (f", about {format_duration(eta)} left" if eta is not None else ""))
            next_print = time.monotonic() + every
        time.sleep(0.5)


def _train(root: Path, spec, name: str, echo) -> Path:
    from engine.run.launch import start
    from engine.session import read_session_json

    writer, proc = start(spec, root, name=name, detach=False, command=["rounds", "demo", f"({name})"])
    _write_state(root, stage=name, session=writer.id)
    echo(f"[demo] {name}: session {writer.id} (plan {writer.meta['plan']['name']}, "
         f"predicted peak {writer.meta['plan']['predicted_peak_bytes'] / 2**20:.0f} MiB)")
    code = _follow(writer.path, name, proc, echo)
    meta = read_session_json(writer.path)
    if code != 0 or meta["status"] != "finished":
        raise UserError(f"the demo's {name} run ended {meta['status']}: {meta.get('error')}",
                        hint=f"see {writer.path / 'run.log'}")
    return writer.path


def _eval(root: Path, model: Path, data: Path, name: str, cfg: DemoConfig, held_out: bool, echo,
          check_samples: int = 0) -> Path:
    from engine import evaluate

    spec = evaluate.EvalSpec(model=str(model), data=str(data), batch_size=16, max_new_tokens=cfg.max_new_tokens,
                             held_out=held_out, seed=cfg.seed, check_samples=check_samples,
                             temperature=cfg.check_temperature)
    writer = evaluate.start(spec, root, name=name, command=["rounds", "demo", f"({name})"])
    _write_state(root, stage=name, session=writer.id)
    echo(f"[demo] {name}: answering {writer.meta['items']} questions"
         + (f", with {check_samples} sampled answers each for the consistency judge" if check_samples else "")
         + f" (session {writer.id})")
    t0 = time.monotonic()
    last = [0.0]

    def progress(line: str) -> None:  # the evaluation's own progress lines, at most every 15 s
        if time.monotonic() - last[0] >= 15:
            last[0] = time.monotonic()
            echo(f"[demo] {name}: {line}")

    if evaluate.run(writer.path, echo=progress) != 0:
        raise UserError(f"the demo's {name} evaluation failed", hint=f"see {writer.path / 'events.jsonl'}")
    echo(f"[demo] {name}: done in {time.monotonic() - t0:.0f} s")
    return writer.path


def _judge(session: Path, judge: str, echo) -> dict:
    from engine.report import auto_assess

    counts = auto_assess(session, judge)
    echo(f"[demo] {session.name}: judge {judge}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return counts


def answerable_accuracy(session: Path, annotator: str = "auto:abstain") -> dict:
    """Faithful share among answerable and among unanswerable test items (the demo's data marks which),
    and the abstention share among answerable ones."""
    from engine.assessment import ASSESSMENTS, labels_by_item, read_marks
    from engine.session.records import read_results
    from engine.stats import wilson_interval

    marks, _ = read_marks(session / ASSESSMENTS)
    labels = {i: d[annotator].label for i, d in labels_by_item(marks, annotator).items()}
    out = {}
    for key, want in (("answerable", True), ("unanswerable", False)):
        ids = [r["id"] for r in read_results(session) if (r.get("extra") or {}).get("answerable") is want]
        k = sum(labels.get(i) == "faithful" for i in ids)
        lo, hi = wilson_interval(k, len(ids))
        out[key] = {"faithful": k, "items": len(ids), "rate": k / len(ids) if ids else None, "ci95": [lo, hi],
                    "abstained": sum(labels.get(i) == "abstained" for i in ids)}
    return out


def _sft_stage(root: Path, model: Path, cfg: DemoConfig, echo) -> tuple[Path, Path]:
    """Stage A on the demo data; returns its session and the trained model folder."""
    from engine.recipe import TrainSpec

    # the demo model starts from random weights: Stage A must train all of them (full), not adapters
    sft = _train(root, TrainSpec(stage="sft", model=str(model), data=str(DEMO_DATA / "sft_train.jsonl"),
                                 val=str(DEMO_DATA / "sft_val.jsonl"), plan="full", epochs=cfg.sft_epochs,
                                 lr=cfg.sft_lr, batch=cfg.sft_batch, max_length=cfg.max_length, merge=True,
                                 gradient_checkpointing=False, save_steps=100, logging_steps=2, eval_steps=50,
                                 seed=cfg.seed),
                 "demo-sft", echo)
    return sft, sft / ("merged" if (sft / "merged").is_dir() else "model")


def run_pipeline(root: Path, cfg: DemoConfig, echo=print) -> dict:
    """SFT -> evaluation (test) -> an assessment round judged by the `abstain` judge -> pairs ->
    DPO -> evaluation (test) -> comparison, each a session of its own; returns the summary."""
    from engine.demo_data.generate import ABSTAIN
    from engine.pairs import make_pairs
    from engine.recipe import TrainSpec
    from engine.report import write_compare

    t0 = time.monotonic()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_state(root, stage="model", done=False)
    model = demo_model(cfg.size, cfg.seed)
    echo(f"[demo] model {model} ({cfg.size}, seed {cfg.seed}); sessions in {root}")
    echo("[demo] 1/7 Stage A: SFT of the demo model on what it should know")
    sft, sft_model = _sft_stage(root, model, cfg, echo)
    echo("[demo] 2/7 the SFT model answers the held-out test set")
    ev_sft = _eval(root, sft_model, DEMO_DATA / "test.jsonl", "demo-eval-sft", cfg, True, echo, cfg.check_samples)
    echo("[demo] 3/7 the SFT model answers an assessment round; the `abstain` judge marks the answers")
    rnd = _eval(root, sft_model, DEMO_DATA / "assess_questions.jsonl", "demo-round", cfg, False, echo)
    for s in (ev_sft, rnd):
        _judge(s, cfg.judge, echo)
    if cfg.check_samples:
        _judge(ev_sft, "consistency", echo)
    # hallucinated answers give (reference > answer); faithful ones give (answer > abstention),
    # so DPO learns both halves: abstain on what it doesn't know, answer what it does.
    # The test set's questions never become training pairs, even where a round question words one alike.
    echo("[demo] 4/7 DPO pairs from the judged round")
    pairs = make_pairs([rnd], root / "demo-pairs", val_fraction=0.1, name="demo-pairs",
                       annotator=f"auto:{cfg.judge}", refusal=ABSTAIN, exclude=[str(DEMO_DATA / "test.jsonl")],
                       seed=cfg.seed)
    echo(f"[demo] pairs: {pairs['train_pairs']} for training, {pairs['val_pairs']} for validation "
         f"({(pairs.get('chosen_from') or {}).get('keep answering', 0)} keep a faithful answer over an "
         "abstention)")
    echo(f"[demo] 5/7 Stage B: DPO (plan {cfg.dpo_plan}{' + precomputed reference' if cfg.dpo_precompute_ref else ''})")
    dpo = _train(root, TrainSpec(stage="dpo", model=str(sft_model), data=pairs["train"],
                                 val=pairs["val"] if pairs["val_pairs"] else None, plan=cfg.dpo_plan,
                                 precompute_ref=cfg.dpo_precompute_ref, seed=cfg.seed,
                                 epochs=cfg.dpo_epochs, lr=cfg.dpo_lr, batch=cfg.dpo_batch,
                                 options={"beta": cfg.dpo_beta, "sft_weight": cfg.dpo_sft_weight},
                                 gradient_checkpointing=False,
                                 max_length=cfg.max_length, merge=True, save_steps=500, logging_steps=2,
                                 eval_steps=50), "demo-dpo", echo)
    dpo_model = dpo / ("merged" if (dpo / "merged").is_dir() else "model")
    echo("[demo] 6/7 the DPO model answers the same held-out test set")
    ev_dpo = _eval(root, dpo_model, DEMO_DATA / "test.jsonl", "demo-eval-dpo", cfg, True, echo, cfg.check_samples)
    _judge(ev_dpo, cfg.judge, echo)
    if cfg.check_samples:
        _judge(ev_dpo, "consistency", echo)
    echo("[demo] 7/7 comparison")
    comparison, md = write_compare(ev_sft, ev_dpo, f"auto:{cfg.judge}")
    acc_sft, acc_dpo = answerable_accuracy(ev_sft, f"auto:{cfg.judge}"), answerable_accuracy(ev_dpo,
                                                                                             f"auto:{cfg.judge}")
    p = comparison["paired"]
    drop = (comparison["a"]["rate"] or 0) - (comparison["b"]["rate"] or 0)
    acc_change = (acc_dpo["answerable"]["rate"] or 0) - (acc_sft["answerable"]["rate"] or 0)
    wall = round(time.monotonic() - t0, 1)
    target = drop >= 0.30 and p["mcnemar_p"] < 0.01 and acc_change >= -0.10 and wall <= 15 * 60
    summary = {"config": asdict(cfg), "sessions": {"sft": sft.name, "eval_sft": ev_sft.name, "round": rnd.name,
                                                   "pairs": pairs["session"], "dpo": dpo.name,
                                                   "eval_dpo": ev_dpo.name},
               "pairs": pairs, "comparison": comparison, "answerable_sft": acc_sft, "answerable_dpo": acc_dpo,
               "hallucination_drop_points": round(100 * drop, 1), "mcnemar_p": p["mcnemar_p"],
               "answerable_accuracy_change_points": round(100 * acc_change, 1), "target_met": target,
               "judge": cfg.judge, "wall_seconds": wall}
    (root / "demo-summary.json").write_text(json.dumps(summary, indent=1))
    _write_state(root, stage="done", done=True, eval_sft=ev_sft.name, eval_dpo=ev_dpo.name,
                 annotator=f"auto:{cfg.judge}")
    lines = [md.rstrip(), "",
             f"answerable questions answered correctly: SFT {_pct(acc_sft['answerable'])}, "
             f"DPO {_pct(acc_dpo['answerable'])}",
             f"unseen drugs answered with an abstention: SFT {_pct(acc_sft['unanswerable'])}, "
             f"DPO {_pct(acc_dpo['unanswerable'])}",
             f"target (hallucination down >= 30 points with McNemar p < 0.01, answerable accuracy down <= 10 "
             f"points, <= 15 min): {'MET' if target else 'NOT MET'}",
             f"wall time {summary['wall_seconds'] / 60:.1f} min"]
    echo("\n".join(lines))
    return summary


def _pct(d: dict) -> str:
    if not d["items"]:
        return "n/a"
    return f"{d['faithful']}/{d['items']} = {100 * d['rate']:.0f} % (95 % CI {100 * d['ci95'][0]:.0f}–" \
           f"{100 * d['ci95'][1]:.0f} %)"


def run_first_stage(root: Path, cfg: DemoConfig, echo=print) -> None:
    """What `rounds demo` runs in the background: SFT, then an evaluation of the SFT model to assess."""
    _, sft_model = _sft_stage(root, demo_model(cfg.size, cfg.seed), cfg, echo)
    ev = _eval(root, sft_model, DEMO_DATA / "test.jsonl", "demo-eval-sft", cfg, True, echo, cfg.check_samples)
    # the judges' verdicts wait beside each answer for the person who assesses them
    _judge(ev, cfg.judge, echo)
    if cfg.check_samples:
        _judge(ev, "consistency", echo)


DEMO_REQUEST = "demo-request.json"  # in the sessions root: what the background demo is asked to run


def demo_lock(root: Path):
    """Held by the process that runs a demo, for as long as it runs: two demos in one sessions root
    would train at once on one CPU and share the demo's cache and state file."""
    from engine.session import WriterLock

    return WriterLock(Path(root) / DEMO_REQUEST, "demo", message=f"a demo is already running in {Path(root).resolve()}",
                      hint="watch it with `rounds` (Home), or wait until it finishes; "
                           "--sessions DIR runs another demo in another folder")


def start_pipeline_background(root: Path, quick: bool = False, full: bool = False) -> subprocess.Popen:
    """Start the demo (its first stage, or with ``full`` the whole loop) in its own process
    session, so that it survives the console and the terminal. What to run is written to
    ``ROOT/demo-request.json``; the process (``python -m engine.demo ROOT``) takes the root alone."""
    from engine.run.launch import spawn
    from engine.session import write_json_atomic

    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / DEMO_REQUEST, {"quick": quick, "full": full})
    return spawn("engine.demo", root, root / "demo.log")


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.demo ROOT``: the run ``ROOT/demo-request.json`` asks for."""
    import json

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.demo SESSIONS_ROOT", file=sys.stderr)
        return 2
    root = Path(argv[0])
    try:
        request = json.loads((root / DEMO_REQUEST).read_text())
    except (OSError, ValueError):
        request = {}
    cfg = DemoConfig.quick() if request.get("quick") else DemoConfig()
    try:
        with demo_lock(root):
            if request.get("full", True):
                run_pipeline(root, cfg, echo=lambda m: print(m, flush=True))
            else:
                run_first_stage(root, cfg, echo=lambda m: print(m, flush=True))
    except UserError as e:
        print(f"rounds demo: error: {e}", file=sys.stderr, flush=True)
        _write_state(root, error=str(e))  # a console following the demo says so
        return 1
    except BaseException as e:
        _write_state(root, error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
