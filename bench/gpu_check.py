"""The first thing to run on a GPU: does the planner's promise hold on real model shapes?

For Llama-3.2-1B- and Llama-3-8B-shaped models (random weights, built on the GPU, a tokenizer
trained here), on a card capped to act as a 12 GiB one, it asks `rounds plan`'s planner for its
recommended plan for DPO and for SFT, then runs real training steps of that plan at micro-batch
1 and 4 through the same code `rounds train` uses, each point in a fresh process, and prints per
point the predicted bytes against ``torch.cuda.max_memory_allocated`` (the planner's "allocated"
figure: its peak less the CUDA context and the allocator's slack) and the predicted peak against
NVML's view of the card (what the driver counts: context, reserved pool and all), and predicted
against measured seconds per step.

It fails (exit 1) when a point predicted to fit runs out of memory, or a point could not run.
The last lines are the 7B-class DPO peak against its target: at most 8 GiB and within 10 % of
the prediction, on a 12 GiB card.

    python bench/gpu_check.py                       # on a GPU: ~5-8 minutes on an H100/H200
    python bench/gpu_check.py --gpu-mem 16GiB --shapes 1b
    python bench/gpu_check.py --device cpu          # the same path on a small model on CPU (CI runs it)

On CPU there is no card to cap: memory is live tensor bytes (engine.memtrack) against the
planner's peak, and a shape small enough for a CPU stands in for the real ones.
The cap: torch.cuda.set_per_process_memory_fraction((budget - CUDA context) / card), so the
allocator has what a real card of that size would leave it after the context.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GiB = 2**30
MiB = 2**20

# real models' shapes (config.json of meta-llama/Llama-3.2-1B and Meta-Llama-3-8B), random weights
SHAPES = {
    "1b": {"label": "Llama-3.2-1B", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
           "tie_word_embeddings": True, "max_position_embeddings": 131072, "rope_theta": 500000.0},
    "8b": {"label": "Llama-3-8B", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
           "tie_word_embeddings": False, "max_position_embeddings": 8192, "rope_theta": 500000.0},
    # the CPU path: a shape a 2-core CI machine trains in seconds
    "cpu": {"label": "small (CPU stand-in)", "hidden_size": 256, "intermediate_size": 896,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096,
            "tie_word_embeddings": False},
}
STAGES = ("dpo", "sft")
MICRO_BATCHES = (1, 4)


def build_model(out: Path, name: str, device: str) -> Path:
    """A model folder of the named shape: the tiny model's tokenizer and chat template, the real
    shape's config, random weights (made on the GPU in bf16 where there is one: seconds, not the
    minutes an 8 B model takes to initialise on a CPU)."""
    from engine.tinymodel import build_tiny_model

    fields = {k: v for k, v in SHAPES[name].items() if k != "label"}
    if device == "cpu":
        return build_tiny_model(out, size="tiny", overrides=fields)
    return build_random_bf16(out, fields, "cuda")


def build_random_bf16(out: Path, fields: dict, where: str) -> Path:
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from engine.tinymodel import build_tiny_model

    tok = build_tiny_model(out.parent / f"{out.name}-tokenizer", size="tiny")
    config = AutoConfig.from_pretrained(tok)
    for k, v in fields.items():
        setattr(config, k, v)
    config.dtype = "bfloat16"
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(where):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out, max_shard_size="4GB")
    del model
    torch.cuda.empty_cache()
    for f in tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    shutil.rmtree(tok)
    return out


def rows_for(model: Path, stage: str, seq: int, n: int) -> list[dict]:
    """Examples of real data's kind of unevenness, so batches are padded as they are in a real run:
    SFT, three in four of ``seq`` tokens and one of about 60 % of it; DPO, every chosen answer of
    ``seq`` tokens and its rejected one a fifth shorter (TRL pads the pair to its longer answer)."""
    from plan_accuracy import make_rows

    full = make_rows(model, stage, seq, 1)[0]
    if stage == "sft":
        short = make_rows(model, stage, max(8, int(seq * 0.6)), 1)[0]
        return [dict(short if i % 4 == 3 else full, id=str(i)) for i in range(n)]
    words = full["chosen"].split()
    return [dict(full, rejected=" ".join(words[: max(1, int(len(words) * 0.8))])) for _ in range(n)]


def points_for(name: str, model: Path, device, max_length: int, stage: str, lengths: list[int] | None) -> list[dict]:
    """The recommended plan for the stage at this budget, at micro-batch 1 and 4 and at its own
    micro-batch (if that is another), with its prediction for the data's lengths (as `rounds train` plans)."""
    from engine.plan import Strategy, Workload, plan, predict_memory, predict_seconds
    from engine.shapes import read_shape

    shape = read_shape(model)
    usable = int(device.budget_bytes * (1 - device.margin))
    out = []
    work = Workload(stage=stage, max_length=max_length, batch=max(MICRO_BATCHES), lengths=lengths)
    rec = plan(shape, work, device).recommended
    if rec is None:
        return [{"shape": name, "stage": stage, "skip": "nothing fits"}]
    for mb in sorted({*MICRO_BATCHES, rec.strategy.micro_batch}):
        s = Strategy(rec.strategy.plan, rec.strategy.precompute_ref, rec.strategy.gradient_checkpointing, mb)
        pred = predict_memory(shape, s, work, device)
        out.append({"shape": name, "stage": stage, "plan": s.plan, "precompute_ref": s.precompute_ref,
                    "gradient_checkpointing": s.gradient_checkpointing, "batch": mb, "seq": max_length,
                    "recommended": mb == rec.strategy.micro_batch, "name": s.name, "padded": work.padded(mb),
                    "predicted_peak": pred["peak_bytes"], "predicted_allocated": pred["allocated_bytes"],
                    "moment": pred["moment"], "predicted_seconds": predict_seconds(shape, s, work, device),
                    "fits": pred["peak_bytes"] <= usable})
    return out


def _allocated(device: str) -> int:
    import torch

    return torch.cuda.memory_allocated() if device == "cuda" else 0


def attention_kernels(device: str = "cuda") -> str:
    """Which attention kernel PyTorch runs for a padded batch (a boolean mask, as transformers passes
    it) on this GPU, told by the bytes each kernel keeps for backward."""
    from contextlib import nullcontext

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, n, d = 2, 32, 512, 64
    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.ones(n, n, dtype=torch.bool, device=device).tril().expand(b, 1, n, n).clone()
    mask[1, :, :, -64:] = False  # the second sequence is padded
    import warnings

    warnings.filterwarnings("ignore", message=".*(kernel not used|not support|runtime disabled).*")
    kept = {}
    for name, backends in [("default", None), ("flash", [SDPBackend.FLASH_ATTENTION]),
                           ("efficient", [SDPBackend.EFFICIENT_ATTENTION]), ("math", [SDPBackend.MATH])]:
        o = None
        if device == "cuda":
            torch.cuda.synchronize()
        base = _allocated(device)
        try:
            with sdpa_kernel(backends) if backends else nullcontext():
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                kept[name] = f"{(_allocated(device) - base - o.numel() * 2) / MiB:.1f} MiB"
                o.float().sum().backward()
        except RuntimeError as e:
            kept[name] = "refused (" + str(e).splitlines()[0][:60] + ")"
        del o
    return (f"attention over a padded batch ({b} x {h} heads x {n} tokens, bf16), kept for backward: "
            + ", ".join(f"{k_} {v_}" for k_, v_ in kept.items()))


# --------------------------------------------------------------------------- one point, in its own process

class _DriverPeak:
    """The card's used memory as the driver (NVML) sees it, sampled every 20 ms; the most seen."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.base = self.used()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.used())

    def __enter__(self) -> _DriverPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


def run_point(point: dict, model: str, data: str, steps: int, device: str, budget: int) -> dict:
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ["TQDM_DISABLE"] = "1"
    driver = _DriverPeak() if device == "cuda" else None  # before this process makes its CUDA context
    import torch
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from engine.memtrack import LiveTensorBytes, static_bytes
    from engine.plan import CUDA_CONTEXT
    from engine.recipe import TrainSpec, build_trainer, resolve_runtime

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    times: list[float] = []
    oom_at = int(os.environ.get("ROUNDS_FAULT_OOM_AT_STEP", "0") or 0)  # tests: the failing verdict

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            if oom_at and state.global_step + 1 == oom_at:
                raise torch.OutOfMemoryError(f"injected by ROUNDS_FAULT_OOM_AT_STEP={oom_at}")
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    spec = TrainSpec(stage=point["stage"], model=model, data=data, plan=point["plan"],
                     precompute_ref=point["precompute_ref"], gradient_checkpointing=point["gradient_checkpointing"],
                     max_steps=steps, batch=point["batch"], max_length=point["seq"], save_steps=10_000,
                     device=device)
    result: dict = {"oom": False}
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, max(0.01, (budget - CUDA_CONTEXT) / total)))
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        try:
            if device == "cuda":
                with driver:
                    trainer = build_trainer(spec, resolve_runtime(spec), Path(out), [Clock()])
                    trainer.train()
                    torch.cuda.synchronize()
                result.update(measured=torch.cuda.max_memory_allocated(), reserved=torch.cuda.max_memory_reserved(),
                              driver=driver.peak - driver.base)
            else:
                trainer = build_trainer(spec, resolve_runtime(spec), Path(out), [Clock()])
                tracker = LiveTensorBytes().exclude(trainer.model, getattr(trainer, "ref_model", None))
                static = static_bytes(trainer.model, getattr(trainer, "ref_model", None))
                with tracker:
                    trainer.train()
                result.update(measured=static + tracker.peak, reserved=0, driver=0)
        except torch.OutOfMemoryError as e:
            result.update(oom=True, error=str(e).splitlines()[0][:300])
            if device == "cuda":
                result.update(measured=torch.cuda.max_memory_allocated(), driver=driver.peak - driver.base)
    result.update(seconds_per_step=statistics.median(times[1:] or times) if times else 0.0, step_times=times,
                  wall=time.perf_counter() - t0)
    return result


# --------------------------------------------------------------------------- the table

def _gib(n: float) -> str:
    return f"{n / GiB:.2f}G" if n >= GiB else f"{n / MiB:.0f}M"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--gpu-mem", default="12GiB", help="act as a card of this size (default 12GiB)")
    ap.add_argument("--shapes", help="comma-separated, of: 8b, 1b (default both; the CPU path uses its own)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of: dpo, sft (default both)")
    ap.add_argument("--max-length", type=int, default=512, help="tokens per example (rounds train's default)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--point-timeout", type=float, default=900,
                    help="seconds a point may take before it counts as failed (default 900)")
    ap.add_argument("--out", help="also write every point's prediction and measurement here (JSON lines)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_point(json.loads(args.one), args.model, args.data, args.steps,
                                               args.device, args.budget)), flush=True)
        return 0


    from engine.plan import calibrate_cpu, calibrate_cuda, parse_size

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA GPU; `--device cpu` runs the CPU path", file=sys.stderr)
            return 2
        total = torch.cuda.get_device_properties(0).total_memory
        budget = parse_size(args.gpu_mem)
        device = calibrate_cuda(budget, torch.cuda.get_device_name(0))
        shapes = args.shapes.split(",") if args.shapes else ["1b", "8b"]
        print(f"{device.name} ({total / GiB:.0f} GiB) capped to act as a {budget / GiB:g} GiB card; matmul "
              f"{device.flops / 1e12:.0f} TFLOP/s ({'probed' if device.calibrated else 'typical'}); "
              f"{args.steps} steps a point, max length {args.max_length}", flush=True)
        print(attention_kernels(), flush=True)
    else:
        budget = 0
        device = calibrate_cpu()
        shapes = ["cpu"]
        print(f"CPU path ({os.cpu_count()} cores): live tensor bytes against the planner's peak; "
              f"{args.steps} steps a point, max length {args.max_length}", flush=True)
    bad = [s for s in args.stages.split(",") if s not in STAGES]
    if bad:
        print(f"gpu_check: unknown stage(s) {', '.join(bad)}: choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    unknown = [s for s in shapes if s not in SHAPES or (args.device == "cuda") == (s == "cpu")]
    if unknown:
        print(f"gpu_check: unknown shape(s) {', '.join(unknown)}: choose from 1b, 8b", file=sys.stderr)
        return 2

    heads = ("pred alloc", "max alloc") if args.device == "cuda" else ("predicted", "live peak")
    print(f"{'point':<40}{heads[0]:>11}{heads[1]:>11}{'err':>7}{'pred peak':>11}{'NVML':>9}"
          f"{'s/step pred':>12}{'meas':>8}", flush=True)
    failed: list[str] = []
    dpo_7b: list[tuple[dict, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in shapes:
            t0 = time.perf_counter()
            model = build_model(tmp / name, name, args.device)
            print(f"-- {SHAPES[name]['label']}: built in {time.perf_counter() - t0:.0f} s", flush=True)
            from engine.data import example_lengths

            points = []
            for stage in args.stages.split(","):
                rows = rows_for(model, stage, args.max_length, n=max(MICRO_BATCHES) * (args.steps + 1))
                data = tmp / f"{name}-{stage}.jsonl"
                data.write_text("".join(json.dumps(r) + "\n" for r in rows))
                lengths = example_lengths(str(model), rows, stage)
                points += [dict(p, data=str(data)) for p in points_for(name, model, device, args.max_length, stage,
                                                                        lengths)]
            for p in points:
                label = (f"{name} {p['stage']} " + p.get("name", "") + (" pad" if p.get("padded") else "")
                         + (" (rec)" if p.get("recommended") else ""))
                if p.get("skip"):
                    print(f"{label:<40} {p['skip']} on this budget: not run", flush=True)
                    continue
                if not p["fits"]:
                    print(f"{label:<40}{_gib(p['predicted_allocated']):>11}  predicted not to fit "
                          f"({_gib(p['predicted_peak'])} > {_gib(device.budget_bytes * (1 - device.margin))} "
                          "usable): not run", flush=True)
                    continue
                try:
                    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(p), "--model", str(model),
                                           "--data", p["data"], "--steps", str(args.steps), "--device", args.device,
                                           "--budget", str(budget)], capture_output=True, text=True,
                                          stdin=subprocess.DEVNULL, timeout=args.point_timeout)
                except subprocess.TimeoutExpired:
                    print(f"{label:<40} TIMED OUT after {args.point_timeout:g} s (--point-timeout)", flush=True)
                    failed.append(label)
                    continue
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(f"{label:<40} FAILED to run (exit {proc.returncode}):\n{proc.stderr[-2500:]}", flush=True)
                    failed.append(label)
                    continue
                m = json.loads(line[len("RESULT "):])
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"point": p, "measured": m, "device": device.name,
                                            "budget": budget}) + "\n")
                if m["oom"]:
                    print(f"{label:<40}{_gib(p['predicted_allocated']):>11}  predicted to fit, but ran out of "
                          f"memory: {m.get('error', '')}", flush=True)
                    failed.append(label)
                    continue
                pred = p["predicted_allocated"] if args.device == "cuda" else p["predicted_peak"]
                err = (pred - m["measured"]) / m["measured"]
                nvml = _gib(m["driver"]) if args.device == "cuda" else "-"
                print(f"{label:<40}{_gib(pred):>11}{_gib(m['measured']):>11}{err * 100:>6.1f}%"
                      f"{_gib(p['predicted_peak']):>11}{nvml:>9}{p['predicted_seconds']:>12.3f}"
                      f"{m['seconds_per_step']:>8.3f}", flush=True)
                if name == "8b" and p["stage"] == "dpo" and p.get("recommended"):
                    dpo_7b.append((p, m))
            import shutil

            shutil.rmtree(model, ignore_errors=True)
    if failed:
        print(f"FAILED: {len(failed)} point(s): {', '.join(failed)}")
    if dpo_7b:
        p, m = dpo_7b[0]
        err = (p["predicted_allocated"] - m["measured"]) / m["measured"]
        ok = m["measured"] <= 8 * GiB and abs(err) <= 0.10
        print(f"7B-class DPO, recommended plan {p['name']} on a {budget / GiB:g} GiB card: measured "
              f"{m['measured'] / GiB:.2f} GiB allocated ({m['driver'] / GiB:.2f} GiB as NVML sees the card), "
              f"predicted {p['predicted_allocated'] / GiB:.2f} GiB ({err * 100:+.1f} %): target <= 8 GiB and "
              f"within 10 %: {'MET' if ok else 'NOT MET'}")
    elif "8b" in shapes and "dpo" in args.stages.split(","):
        print(f"7B-class DPO on a {budget / GiB:g} GiB card: NOT MEASURED (its recommended plan did not run: "
              "see its line above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
