"""DPO memory and speed: the naive setup vs TRL+PEFT LoRA vs each `rounds` plan, side by side.

Same model, data, micro-batch and sequence length for every configuration, each in a
fresh process:

- ``naive``: TRL's DPOTrainer on the full model with its defaults, which loads a second
  full copy as the frozen reference (the user's original setup);
- ``trl-lora``: TRL + PEFT LoRA as TRL documents it (``peft_config=LoraConfig(...)``);
- ``rounds:<plan>``: the trainer ``rounds train dpo`` builds (engine.recipe.build_trainer)
  for full / lora / qlora, with and without ``--precompute-ref``.

For each: peak tracked tensor bytes (weights + everything allocated during the steps,
engine.memtrack), peak RSS growth of the process from just before loading, and seconds
per step (median over the measured steps). Ratios are to ``naive``, in the same run.

    python bench/dpo_memory.py [--size small|tiny] [--steps 6] [--batch 4] [--seq 256]

``--seq`` pads every prompt with neutral context so each pair is about that many tokens
(the demo's own pairs are ~30 tokens, where weights dominate everything).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = ["naive", "trl-lora", "rounds:full", "rounds:full+pre", "rounds:lora", "rounds:lora+pre",
           "rounds:qlora", "rounds:qlora+pre"]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_data(out: Path, seq: int, n: int, model: Path) -> Path:
    """Demo pairs whose prompts carry earlier demo answers as context, to about ``seq`` tokens a pair."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    demo = ROOT / "engine" / "demo_data"
    rows = [json.loads(x) for x in (demo / "dpo_train.jsonl").read_text().splitlines()][:n]
    notes = [json.loads(x)["answer"] for x in (demo / "sft_train.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        budget = seq - len(tok(r["prompt"] + r["chosen"])["input_ids"]) - 16
        context, j = [], i
        while len(tok(" ".join(context))["input_ids"]) < budget:
            context.append(notes[j % len(notes)])
            j += 7
        r["prompt"] = " ".join(context[:-1]) + "\n\n" + r["prompt"]
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_one(config: str, model: str, data: str, steps: int, batch: int, seq: int) -> dict:
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import bitsandbytes  # noqa: F401
    import datasets  # noqa: F401 - imported before the RSS baseline, like everything below
    import peft  # noqa: F401
    import torch
    import trl  # noqa: F401
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from engine.memtrack import LiveTensorBytes, static_bytes

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"
    torch.manual_seed(0)

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    rss0 = _rss()  # after the imports: growth is what loading and training add
    with tempfile.TemporaryDirectory() as out:
        if config in ("naive", "trl-lora"):
            from datasets import Dataset
            from peft import LoraConfig
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from trl import DPOConfig, DPOTrainer

            tok = AutoTokenizer.from_pretrained(model)
            rows = [json.loads(x) for x in Path(data).read_text().splitlines()]
            ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                     "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                     "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
            args = DPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, max_length=seq + 64,
                             report_to="none", save_strategy="no", use_cpu=True, bf16=False, disable_tqdm=True,
                             logging_steps=1)
            peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM") \
                if config == "trl-lora" else None
            trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), args=args,
                                 train_dataset=ds, processing_class=tok, peft_config=peft, callbacks=[Clock()])
        else:
            from engine.recipe import TrainSpec, build_trainer, resolve_runtime

            plan, _, pre = config.split(":")[1].partition("+")
            spec = TrainSpec(stage="dpo", model=model, data=data, plan=plan, precompute_ref=bool(pre),
                             max_steps=steps, batch=batch, max_length=seq + 64, save_steps=10_000, device="cpu")
            rt = resolve_runtime(spec)
            trainer = build_trainer(spec, rt, Path(out), [Clock()])
        static = static_bytes(trainer.model, getattr(trainer, "ref_model", None))
        tracker = LiveTensorBytes().exclude(trainer.model, getattr(trainer, "ref_model", None))
        with tracker:
            trainer.train()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured = times[1:] if len(times) > 2 else times
    return {"config": config, "tracked_peak": static + tracker.peak, "static": static, "dynamic_peak": tracker.peak,
            "rss_growth": peak_rss - rss0, "seconds_per_step": statistics.median(measured),
            "steps": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "small"], default="small")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.model, args.data, args.steps, args.batch, args.seq)))
        return

    from engine.tinymodel import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "model", size=args.size)
        data = make_data(tmp, args.seq, n=max(args.batch * (args.steps + 2), 16), model=model)
        print(f"DPO on the {args.size} model, micro-batch {args.batch}, ~{args.seq} tokens a pair, "
              f"{args.steps} steps, CPU ({os.cpu_count()} cores); each configuration in a fresh process")
        results = []
        for config in args.configs.split(","):
            proc = subprocess.run([sys.executable, __file__, "--one", config, "--model", str(model), "--data",
                                   str(data), "--steps", str(args.steps), "--batch", str(args.batch),
                                   "--seq", str(args.seq)], capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{config}: FAILED\n{proc.stderr[-2000:]}")
                continue
            results.append(json.loads(line[7:]))
        base = next(r for r in results if r["config"] == "naive")
        mib = 2**20
        print(f"{'configuration':<18}{'tracked peak':>14}{'x naive':>9}{'RSS growth':>13}{'x naive':>9}"
              f"{'s/step':>9}{'steps/s x naive':>17}")
        for r in results:
            peak_ratio = r["tracked_peak"] / base["tracked_peak"]
            print(f"{r['config']:<18}{r['tracked_peak'] / mib:>10.1f} MiB{peak_ratio:>8.2f}x"
                  f"{r['rss_growth'] / mib:>9.0f} MiB{r['rss_growth'] / base['rss_growth']:>8.2f}x"
                  f"{r['seconds_per_step']:>9.3f}{base['seconds_per_step'] / r['seconds_per_step']:>16.2f}x")
        rounds = [r for r in results if r["config"].startswith("rounds:")]
        best = min(rounds, key=lambda r: r["tracked_peak"])
        fast_enough = [r for r in rounds if base["seconds_per_step"] / r["seconds_per_step"] >= 0.8]
        best_fast = min(fast_enough, key=lambda r: r["tracked_peak"]) if fast_enough else None
        print(f"smallest rounds plan: {best['config']}: {best['tracked_peak'] / base['tracked_peak']:.2f}x the naive "
              f"tracked peak at {base['seconds_per_step'] / best['seconds_per_step']:.2f}x its steps/s")
        if best_fast:
            ratio = best_fast["tracked_peak"] / base["tracked_peak"]
            speed = base["seconds_per_step"] / best_fast["seconds_per_step"]
            verdict = "MET" if ratio <= 0.35 else "NOT MET"
            print(f"best plan at >= 0.8x the naive steps/s: {best_fast['config']}: {ratio:.2f}x tracked peak, "
                  f"{speed:.2f}x steps/s -> target (<= 0.35x peak at >= 0.8x steps/s) {verdict}")
        else:
            print("no rounds plan reached 0.8x the naive steps/s -> target NOT MET")


if __name__ == "__main__":
    main()
