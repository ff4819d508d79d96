"""Predict peak memory and time of a training step from ``config.json`` alone.

The memory model follows what a step holds, component by component:

- weights: the policy (bf16/fp32, or NF4 4-bit + quantization constants for the decoder's
  linear layers under QLoRA), DPO's frozen reference copy (``full`` without
  ``--precompute-ref`` only; LoRA plans use the same weights with adapters off);
- trainable parameters, their gradients and AdamW's two moments (fp32, or bf16 where TRL
  casts QLoRA adapters to bf16; 8-bit paged AdamW on CUDA keeps two bytes a parameter);
- activations per token and layer — every tensor the Llama-style decoder layer saves for
  backward — without gradient checkpointing, or, with it, one layer input per layer plus
  one layer recomputed at a time;
- the LM head: TRL scores tokens in tiles (fused LM head), [min(tokens, 4096) x tile width];
  DPO runs chosen and rejected in one forward, so its token count is doubled;
- a dequantized weight at a time under QLoRA; CUDA context and allocator slack on GPU.

The step's peak is the largest of three moments: the start of backward (the activations
kept, the LM head's tiles), backward through a layer (the activations kept, that layer's
recomputed internals, a dequantized 4-bit weight) and the optimizer step (all gradients,
with the moments). The
per-token activation coefficients were calibrated against measured live-tensor peaks of
real TRL runs (bench/plan_accuracy.py prints predicted vs measured for every point).

Time: FLOPs of the step (forward, backward, recomputation, the reference forward) over
the device's measured matmul throughput; ``calibrate_cpu`` runs a short probe, cached.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine import heap, methods, stages
from engine.errors import UserError
from engine.shapes import ModelShape
from engine.units import format_seconds, human_bytes

GiB = 1024**3
TOKEN_TILE = 4096  # TRL's fused LM head: tokens per tile
MAX_TILE_WIDTH = 32768

# Activation elements per token, fitted by non-negative least squares (relative error) to the
# measured live-tensor peaks of real TRL steps on CPU (transformers' Llama, GPT-NeoX and GPT-2, SDPA
# attention; bench/plan_accuracy.py --raw, then bench/plan_fit.py): twelve shapes, refitted 2026-12-03
# on two runs together (a full grid and a --quick --repeat 3 one, 272 points, 224 fitted and 48 held
# back, kept in bench/results/) — the original four (vocabularies of 1.5 k to 32 k), five with real
# models' proportions (Llama-3: MLP 3.5 x hidden, GQA; Qwen2.5: 5.3 x; Gemma-2: 4 x with wide heads;
# Phi-3: 2.7 x, no GQA; Llama-3 with a 32 k vocabulary), a 12-layer one, a GPT-NeoX (an MLP that is
# not gated) and a GPT-2 (Conv1D, gelu_new, dropout) — checked by leaving each shape
# out of the fit in turn and on held-back points. Every per-layer term is in the layer's own widths:
# h (norms, residuals), the attention's q + 2 x kv projection width (heads x head_dim, kv heads x
# head_dim), and the MLP's width times its up projections (gate and up: 2; GPT-NeoX, GPT-2: 1).
# With gradient checkpointing: "inputs" x h per layer for the inputs checkpointing keeps, and, for the
# one layer being recomputed during backward, "layer" x h + "layer_attn" x attention width +
# "layer_mlp" x MLP width ("layer_mlp_dpo" when chosen and rejected go through together); without
# checkpointing, per layer: "nogc" x h + "nogc_attn" x attention width + "nogc_mlp" x MLP width.
# "tiles": copies of the LM head's logits tile alive at once (TRL's chunked log-softmax and its torch
# fallback on CPU keep about eight). QLoRA without checkpointing was not measured and keeps the
# earlier figure (in h only).
ACT = {
    "full": {"layer": 0.0, "layer_attn": 0.44, "layer_mlp": 1.85, "layer_mlp_dpo": 2.94, "inputs": 1.23, "nogc": 3.9,
             "nogc_attn": 1.22, "nogc_mlp": 2.36, "tiles_sft": 8.42, "tiles_dpo": 8.46},
    "lora": {"layer": 0.0, "layer_attn": 3.55, "layer_mlp": 2.93, "layer_mlp_dpo": 3.24, "inputs": 1.22, "nogc": 9.14,
             "nogc_attn": 0.35, "nogc_mlp": 1.74, "tiles_sft": 8.31, "tiles_dpo": 8.42},
    "qlora": {"layer": 0.0, "layer_attn": 2.64, "layer_mlp": 1.88, "layer_mlp_dpo": 3.13, "inputs": 1.1, "nogc": 30.57,
              "nogc_attn": 0.0, "nogc_mlp": 0.0, "tiles_sft": 8.47, "tiles_dpo": 8.49},
}
OPTIMIZER_STEP_TEMPS = 0.2  # foreach AdamW's temporaries, as a fraction of the gradients
# CUDA, a padded batch (an attention mask): measured on an H200 (bench/gpu_check.py), a
# Llama-3.2-1B-shaped DPO step without checkpointing kept 0.68 GiB more at micro-batch 1 and 2.5 GiB
# more at 4 than the CPU-fitted activations, growing as tokens x heads x length per layer: what
# PyTorch's math attention kernel keeps (the softmaxed scores) plus transformers' GQA keys and values
# repeated to every head, which is what this term counts (0.63 and 2.5 GiB there; the two points then
# come within 1.3 %). Which kernel runs is not yet confirmed: in isolation PyTorch picked its
# memory-efficient kernel for such a mask, and a padded SFT step at micro-batch 4 measured 17 % below
# a prediction with this term. It is kept for every padded batch, on the side of predicting too much,
# until a GPU run settles it. On the CPU, PyTorch's flash kernel takes the mask, and the fit holds it.
MASKED_ATTENTION_SCORES = 1.0  # copies of the scores kept, in the compute dtype
# The model's own dropout, where the stage keeps it on (SFT; TRL's DPO turns every dropout off): counted,
# not fitted — the tensors one layer's backward keeps, read with torch's saved-tensor hooks on a GPT-2
# block on CPU (attn_pdrop, resid_pdrop 0.1, SDPA): dropout on the attention scores takes PyTorch's math
# kernel there, which keeps three copies of the scores (softmaxed, the mask, dropped) per head a token;
# on CUDA the flash and memory-efficient kernels take dropout themselves and keep none, so the term is
# the CPU's only. Dropout on the attention's and the MLP's outputs keeps one element of each per hidden
# unit (2 x h a token; a 1-byte mask on CUDA).
ATTN_DROPOUT_SCORES = 3.0
HIDDEN_DROPOUT_ELEMENTS = 2.0


@functools.lru_cache(maxsize=64)
def activation_saved(name: str) -> float:
    """Elements the MLP's activation keeps for backward, per element of its input, beyond the input
    and output every activation's neighbours keep anyway: 0 for the fused kernels (silu, gelu, relu,
    gelu_pytorch_tanh), 3 for GPT-2's gelu_new (written out in torch operations). Read from
    transformers' own ACT2FN with saved-tensor hooks, so it is true for the installed version; 0.0
    for a name transformers does not know (counted as fused)."""
    kept: dict[int, int] = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    try:
        import torch
        from transformers.activations import ACT2FN

        act = ACT2FN[name]
        # grad on whatever the caller's mode (under no_grad nothing would be saved, and cached as 0)
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.randn(64, 64, requires_grad=True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                y = act(x)
    except Exception:  # noqa: BLE001 - an unknown name, or an activation that cannot run: counted as fused
        return 0.0
    skip = {x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()}
    return sum(v for k, v in kept.items() if k not in skip) / (x.numel() * x.element_size())


@functools.lru_cache(maxsize=64)
def activation_kernels(name: str) -> tuple[int, int]:
    """Kernels the MLP's activation runs over its input beyond a fused one, in the forward and in the
    backward: (0, 0) for silu, gelu, relu, gelu_pytorch_tanh; 7 and more for GPT-2's gelu_new, which
    transformers writes out in torch operations. Counted with a dispatch mode on transformers' own
    ACT2FN against silu's, so it is true for the installed version; (0, 0) for an unknown name."""
    try:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from transformers.activations import ACT2FN

        class Count(TorchDispatchMode):
            n = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func not in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
                    self.n += 1
                return func(*args, **(kwargs or {}))

        def count(act) -> tuple[int, int]:
            with torch.inference_mode(False), torch.enable_grad():
                x = torch.randn(64, 64, requires_grad=True)
                g = torch.ones(64, 64)
                with Count() as forward:
                    y = act(x)
                with Count() as backward:
                    y.backward(g)
            return forward.n, backward.n

        (f, b), (f0, b0) = count(ACT2FN[name]), count(ACT2FN["silu"])
    except Exception:  # noqa: BLE001 - an unknown name, or an activation that cannot run: counted as fused
        return 0, 0
    return max(0, f - f0), max(0, b - b0)


CUDA_CONTEXT = 600 * 2**20
ALLOCATOR_SLACK = 0.08  # reserved beyond allocated on CUDA, as a fraction of the dynamic part


@dataclass
class Strategy:
    plan: str  # full | lora | qlora
    precompute_ref: bool = False
    gradient_checkpointing: bool = True
    micro_batch: int = 1

    @property
    def name(self) -> str:
        parts = [self.plan]
        if self.precompute_ref:
            parts.append("+pre")
        text = "".join(parts)
        return f"{text}{'' if self.gradient_checkpointing else ' no-gc'} mb{self.micro_batch}"


@dataclass
class Workload:
    stage: str  # a registered stage (engine.stages): what a step does comes from its `factors`
    max_length: int = 1024
    batch: int = 1  # effective batch (micro-batch x gradient accumulation)
    examples: int | None = None  # in the stage's unit (DPO: pairs)
    epochs: float = 1.0
    lora_rank: int = 16
    gpus: int = 1  # data-parallel devices; memory is per device
    shard: str = "none"  # none (DDP: a full copy per device) | fsdp | zero3 (weights, gradients, optimizer state split)
    # token lengths of the data's examples as the chat template renders them (each DPO pair gives its
    # chosen and its rejected), a sample of at most engine.data.SAMPLE_ROWS rows; None: every example is max_length
    lengths: list[int] | None = None  # kept sorted

    def __post_init__(self) -> None:
        if self.lengths:
            self.lengths = sorted(self.lengths)

    @property
    def factors(self) -> stages.PlanFactors:
        return stages.get(self.stage).factors

    def peak_length(self) -> int:
        """The longest sequence a batch can have: it sets the memory peak."""
        return min(self.max_length, self.lengths[-1]) if self.lengths else self.max_length

    def padded_length(self, micro_batch: int) -> float:
        """The expected padded length of a micro-batch (TRL pads to its longest sequence; DPO pads
        chosen and rejected together): the expected maximum of that many lengths drawn from the data."""
        if not self.lengths:
            return float(self.max_length)
        k, n = micro_batch * self.factors.sequences, len(self.lengths)
        return sum(min(v, self.max_length) * ((i / n) ** k - ((i - 1) / n) ** k)
                   for i, v in enumerate(self.lengths, start=1))

    def padded(self, micro_batch: int) -> bool:
        """Whether a micro-batch has padding (an attention mask): more than one sequence in it (DPO's
        chosen and rejected go together) and examples of different lengths, or lengths unknown."""
        if micro_batch * self.factors.sequences <= 1:
            return False
        if not self.lengths:
            return True
        return min(self.lengths[0], self.max_length) != min(self.lengths[-1], self.max_length)

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "lengths"}
        if self.lengths:
            out["lengths"] = {"examples_sampled": len(self.lengths), "longest": self.lengths[-1],
                              "median": self.lengths[len(self.lengths) // 2]}
        return out


@dataclass
class Device:
    kind: str  # cpu | cuda
    budget_bytes: int
    dtype: str = "fp32"  # fp32 | bf16
    flops: float = 0.0  # measured matmul FLOP/s, 0 when unknown
    name: str = ""
    calibrated: bool = False
    margin: float = 0.10  # kept free
    probe: dict | None = None  # the cached probe the throughput came from (when, where, under what load)
    typical: str | None = None  # an unprobed GPU: the kind of card its typical throughput is for

    @property
    def width(self) -> int:
        return 2 if self.dtype == "bf16" else 4


def plan_flags(plan: str, precompute_ref: bool, gradient_checkpointing: bool, micro_batch: int,
               grad_accum: int | None = None) -> str:
    """The `rounds train` flags that choose a strategy (the recommendation, a refused plan's nearest)."""
    return (f"--plan {plan}" + (" --precompute-ref" if precompute_ref else "")
            + ("" if gradient_checkpointing else " --no-gradient-checkpointing") + f" --batch {micro_batch}"
            + (f" --grad-accum {grad_accum}" if grad_accum is not None else ""))


# --------------------------------------------------------------------------- sizes and devices

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)\s*$", re.I)


def parse_size(text: str, what: str = "--gpu-mem") -> int:
    """'12GiB', '12 GB', '12G', '12000MiB' -> bytes. GB is 10^9, GiB 2^30; a bare G means GiB."""
    m = _SIZE.match(str(text))
    if not m:
        raise UserError(f"{text!r} is not a size", field=what,
                        hint="write it like 12GiB, 12GB, 12000MiB or 12G (G means GiB)")
    value, unit = float(m.group(1)), m.group(2).upper()
    if unit in ("", "B"):
        size = int(value)
    else:
        power = "KMGT".index(unit[0]) + 1
        decimal = unit.endswith("B") and "I" not in unit
        size = int(value * (1000**power if decimal else 1024**power))
    if size < 2**20:
        raise UserError(f"{text!r} is {human_bytes(size)}: too little memory to plan for", field=what,
                        hint="give the device's memory with a unit, e.g. 12GiB (a bare number is bytes)")
    return size


def _probe_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "rounds" / "device_probe.json"


def matmul_flops(device: str = "cpu", dtype: str = "fp32", n: int = 1024, repeats: int = 3,
                 min_seconds: float = 0.0) -> float:
    """Measured FLOP/s of an n x n x n matmul on this device (best of ``repeats``, and of as many
    more as ``min_seconds`` takes)."""
    import torch

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    best = float("inf")
    start, done = time.perf_counter(), 0
    while done < repeats + 1 or time.perf_counter() - start < min_seconds:
        done += 1
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b).sum().item()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


PROBE_MAX_AGE = 7 * 86400  # a probe older than this is taken again
BUSY = 0.5  # load average per core above which a probe is "taken on a busy machine"


def machine() -> dict:
    """What a probe result depends on: the CPU model, its cores, the host, and the load now."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        load = os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    except OSError:
        load = 0.0
    return {"cpu_model": model, "cores": os.cpu_count(), "host": socket.gethostname(), "load": round(load, 2)}


def others_busy(measure) -> tuple[dict, float]:
    """Run ``measure()`` and say how busy the rest of the machine was meanwhile: the CPU time every
    other process took, as a fraction of all cores over the probe's wall time. The load average
    lags by a minute; this sees a build or a training run that started just before the probe."""
    import psutil

    def busy(t) -> float:
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    me = psutil.Process()
    t0, sys0, own0 = time.perf_counter(), psutil.cpu_times(), sum(me.cpu_times()[:2])
    out = measure()
    wall = time.perf_counter() - t0
    others = busy(psutil.cpu_times()) - busy(sys0) - (sum(me.cpu_times()[:2]) - own0)
    return out, max(0.0, min(1.0, others / max(1e-9, wall * (os.cpu_count() or 1))))


def probe_is_stale(result: dict, now: float | None = None, here: dict | None = None,
                   expect: dict | None = None) -> str | None:
    """Why a cached probe must be taken again, or None: taken by an earlier version of the probe (a field
    of ``expect`` missing or different), too old, another machine (a home folder shared between hosts),
    or taken busy while the machine is quiet now."""
    for k, v in (expect or {}).items():
        if result.get(k) != v:
            return f"taken by an earlier version of the probe ({k} {result.get(k)!r}, now {v!r})"
    now = time.time() if now is None else now
    here = here or machine()
    taken = result.get("time")
    if not isinstance(taken, (int, float)) or now - taken > PROBE_MAX_AGE:
        return "older than 7 days"
    for k in ("cpu_model", "cores", "host"):
        if result.get(k) != here.get(k):
            return f"taken on another machine ({k} {result.get(k)!r})"
    was, is_ = result.get("load"), here.get("load", 0.0)
    if isinstance(was, (int, float)) and was > BUSY and is_ < was - 0.25:
        return f"taken on a busy machine (load {was:.2f} a core; now {is_:.2f})"
    others = result.get("others_busy")
    if isinstance(others, (int, float)) and others > BUSY and is_ < others - 0.25:
        return f"taken while other processes used {others:.0%} of the CPU (load now {is_:.2f} a core)"
    return None


def _cached_probe(key: str, measure, refresh: bool = False, expect: dict | None = None) -> dict:
    """The probe result stored under ``key`` in the cache file, measured (and stored) when absent,
    stale (``probe_is_stale``, with ``expect``: fields the current probe writes) or ``refresh``; it
    carries when, where and under what load it was taken. A damaged or unwritable cache never stops a
    plan: the probe is then simply re-run."""
    cache = _probe_cache()
    data = {}
    if cache.exists():
        try:
            data = json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError, RecursionError):
            data = {}
    data = data if isinstance(data, dict) else {}
    old = data.get(key)
    if refresh or not isinstance(old, dict) or not old.get("flops") or probe_is_stale(old, expect=expect):
        measured, busy = others_busy(measure)
        result = {**machine(), **measured, "others_busy": round(busy, 2), "time": time.time()}
        if not result.get("flops"):
            return result  # a probe that could not run is not remembered
        data[key] = result
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(data))
        except OSError:
            pass
    return data[key]


# a cached CPU probe's "heap": its 4-bit probe was taken with the C heap a training step has (engine.heap); one
# without it was taken with glibc's defaults, under which a large weight's dequantization cost more
HEAP_PROBED = "training"


def q4_probe() -> dict:
    """bitsandbytes' 4-bit layers on this CPU, which vary far more between CPUs than matmuls do (the
    kernels lean on AVX-512-BF16 where it exists): seconds (best of 40) of a small NF4 layer's forward+backward
    (a call, the fixed cost the step model's q4_layer_pass counts), and seconds per element to
    dequantize a 7 B model's 4096 x 11008 weight. {} where bitsandbytes cannot run."""
    try:
        import logging

        import torch

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        import bitsandbytes as bnb
        import bitsandbytes.functional as bf

        torch.manual_seed(0)
        layer = bnb.nn.Linear4bit(256, 704, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.load_state_dict({"weight": torch.randn(704, 256)})
        layer = layer.to("cpu")
        x = torch.randn(2, 64, 256, requires_grad=True)
        calls = []
        for _ in range(50):  # the best of the last 40 (the first calls warm the kernels up)
            t = time.perf_counter()
            layer(x).sum().backward()
            calls.append(time.perf_counter() - t)
        big = torch.randn(4096, 11008)
        q, state = bf.quantize_4bit(big, quant_type="nf4", compress_statistics=True)
        deq = []
        # with the heap a CPU training step has (engine.heap): the dequantized copy's 180 MB reuse freed pages;
        # a process that already had that heap (a training run planning again) keeps it afterwards
        already = heap.kept()
        allocator = heap.keep_freed_memory()
        try:
            for _ in range(5):
                t = time.perf_counter()
                bf.dequantize_4bit(q, state)
                deq.append(time.perf_counter() - t)
        finally:
            if allocator == heap.REUSE and not already:
                heap.restore()
        return {"q4_call": min(calls[10:]), "q4_element": min(deq) / big.numel()}
    except Exception:  # no bitsandbytes, or it cannot run here: the reference machine's costs are used
        return {}


# The 4-bit probes on the machine the CPU step model was fitted on (TIME["cpu"]): another CPU's 4-bit
# costs are scaled by its own probes against these (probe_scales). Median of 5 fresh processes, quiet:
# "q4_call" 2026-11-30; "q4_element" 2026-12-03, with the heap a training step has (engine.heap). With
# glibc's defaults it read 1.13e-9 on that machine (1.19e-9 on 2026-11-30): every dequantized copy
# of that 180 MB weight was a fresh mapping, zero-filled page by page. (A probe of a layer's fixed
# per-call cost was tried on 2026-12-02 and left out: from one fresh process to the next it read
# 0.51-0.95 ms on the same quiet machine, noise the scaling would add.)
# "flops": the matmul throughput TIME["cpu"]'s terms in seconds are expressed at (the machine they were
# fitted on read it). bench/plan_fit.py normalises every fit to it, so a refit on another machine gives
# seconds at this same reference: leave it as it is.
PROBE_REFERENCE = {"q4_call": 8.45e-4, "q4_element": 1.82e-10, "flops": 131.8e9}
SCALED_BY = {"q4_layer_pass": "q4_call", "dequant": "q4_element"}
# TIME["cpu"]'s terms in seconds that no probe of their own carries to another CPU (a layer's fixed
# per-call cost, elementwise passes, the log-softmax, the optimizer): scaled by the matmul probe
# against the fit machine's, on the reading that a CPU twice as fast at a matmul is about twice as
# fast at these too. Checked once, across two machines: the model fitted on one (132 GFLOP/s)
# predicting 134 fresh steps of twelve shapes on the other (177 GFLOP/s): worst error 70 % unscaled,
# 43 % scaled; mean 17 %, 13 % (the scaling was chosen on the first 37 of those steps). TIME["cpu"]
# has since been refitted on the second machine, normalised to the reference by bench/plan_fit.py.
SECONDS_TERMS = ("weight_read", "elementwise", "lora_elementwise", "dropout", "layer_pass", "lora_layer_pass",
                 "per_logit", "per_logit_tile", "per_trainable", "elementwise_large", "per_logit_large",
                 "activation_kernels", "attention_scores")


def probe_scales(probe: dict | None) -> dict[str, float]:
    """Multipliers of TIME["cpu"]'s terms for a machine with this probe: 4-bit costs by its own probes
    against PROBE_REFERENCE; a large weight's dequantization is the probe's own figure; the other
    terms in seconds (SECONDS_TERMS) by the fit machine's matmul throughput over this one's."""
    p = probe or {}

    def num(key: str) -> float:
        v = p.get(key)
        return float(v) if isinstance(v, (int, float)) and v > 0 else 0.0

    out = {term: num(key) / PROBE_REFERENCE[key] for term, key in SCALED_BY.items() if num(key)}
    if num("flops"):
        out.update({term: PROBE_REFERENCE["flops"] / num("flops") for term in SECONDS_TERMS})
    if num("q4_element"):
        out["dequant_large"] = num("q4_element") / TIME["cpu"]["dequant_large"]
    return out


# fields every CPU probe now writes: "q4_probed", the 4-bit probe was tried (it gives nothing where
# bitsandbytes cannot run); "heap", the C heap it was taken with, which a training step's has to match
# (engine.heap). A cached probe without them was taken by an earlier version and is taken again.
CPU_PROBE_MARKERS = {"q4_probed": True, "heap": HEAP_PROBED}


def _cpu_probe() -> dict:
    return {"flops": matmul_flops("cpu", "fp32", min_seconds=0.5), **q4_probe(), **CPU_PROBE_MARKERS}


def cpu_probe_key() -> str:
    """The CPU probe's key in the probe cache (bench/plan_fit.py reads it back)."""
    return f"cpu:{os.cpu_count()}"


def calibrate_cpu(budget_bytes: int | None = None, refresh: bool = False) -> Device:
    import psutil

    key = cpu_probe_key()
    probe = _cached_probe(key, _cpu_probe, refresh, expect=CPU_PROBE_MARKERS)
    if budget_bytes is None:
        budget_bytes = psutil.virtual_memory().available
    return Device("cpu", budget_bytes, "fp32", probe["flops"], name=f"CPU ({os.cpu_count()} cores)",
                  calibrated=True, probe=probe)


def _probe_cuda() -> dict:
    """bf16 (or fp32 where the GPU has no bf16) matmul throughput of the first GPU; 0 without torch CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {"flops": 0.0, "bf16": True}
        bf16 = bool(torch.cuda.is_bf16_supported())
        return {"flops": matmul_flops("cuda", "bf16" if bf16 else "fp32", n=4096, repeats=5), "bf16": bf16}
    except Exception:  # a driver problem must not stop a plan: it falls back to a typical figure
        return {"flops": 0.0, "bf16": True}


def calibrate_cuda(budget_bytes: int, name: str, refresh: bool = False) -> Device:
    """A GPU seen by NVML, with its matmul throughput probed once (a 4096^3 matmul, best of 5) and
    cached under its name; a probe that could not run (no CUDA build of torch) is not cached."""
    probe = _cached_probe(f"cuda:{name}", _probe_cuda, refresh)
    return cuda_device(budget_bytes, name=name, bf16=probe.get("bf16", True), flops=probe["flops"])


# Typical dense bf16 matmul throughput people get (about 60 % of the datasheet's), for a GPU that is
# named or sized but not here to be probed; labelled "typical" wherever it is used.
TYPICAL_GPUS = [  # (name contains, memory at most GiB, label, FLOP/s)
    ("H100", None, "H100", 600e12), ("H200", None, "H200", 600e12), ("A100", None, "A100", 190e12),
    ("4090", None, "RTX 4090", 100e12), ("3090", None, "RTX 3090", 45e12), ("4080", None, "RTX 4080", 60e12),
    ("4070", None, "RTX 4070", 35e12), ("3060", None, "RTX 3060", 15e12), ("4060", None, "RTX 4060", 18e12),
    ("", 8, "an 8 GB consumer card", 15e12), ("", 12, "a 12 GB consumer card", 20e12),
    ("", 16, "a 16 GB consumer card", 35e12), ("", 24, "a 24 GB card (RTX 3090/4090 class)", 70e12),
    ("", 48, "a 48 GB workstation card", 90e12), ("", 80, "an 80 GB A100/H100", 300e12),
]


def typical_gpu(name: str, budget_bytes: int) -> tuple[str, float]:
    """(what it was taken as, FLOP/s) for a GPU by its name, else by its memory."""
    for key, _mem, label, flops in TYPICAL_GPUS:
        if key and key.lower() in name.lower():
            return label, flops
    gib = budget_bytes / 2**30
    for key, mem, label, flops in TYPICAL_GPUS:
        if not key and gib <= mem * 1.05:
            return label, flops
    return TYPICAL_GPUS[-1][2], TYPICAL_GPUS[-1][3]


def cuda_device(budget_bytes: int, name: str = "GPU", bf16: bool = True, flops: float = 0.0) -> Device:
    typical = None
    if not flops:
        typical, flops = typical_gpu(name, budget_bytes)
    return Device("cuda", budget_bytes, "bf16" if bf16 else "fp32", flops, name=name, calibrated=typical is None,
                  typical=typical)


# --------------------------------------------------------------------------- memory

def _tokens(w: Workload, micro_batch: int, seq: float) -> float:
    return micro_batch * seq * w.factors.sequences


def _policy_weight_bytes(shape: ModelShape, s: Strategy, wb: int) -> int:
    if methods.get(s.plan).quantize:  # NF4 linear weights with double-quantized block scales; the rest unquantized
        quantized = shape.params_linear
        return int(quantized * (0.5 + 1 / 64 + 4 / (64 * 256)) + (shape.params_total - quantized) * wb)
    return shape.params_total * wb


def _trainable(shape: ModelShape, s: Strategy, w: Workload, wb: int) -> tuple[int, int]:
    """(trainable parameters, bytes each)."""
    m = methods.get(s.plan)
    if not m.adapters:
        return shape.params_total, wb
    return shape.lora_params(w.lora_rank), m.adapter_bytes


def predict_memory(shape: ModelShape, s: Strategy, w: Workload, d: Device) -> dict:
    wb = d.width
    P = shape.params_total
    f, m = w.factors, methods.get(s.plan)
    full = not m.adapters
    N = _tokens(w, s.micro_batch, w.peak_length())
    h, L = shape.hidden, shape.layers
    comp: dict[str, int] = {}

    # weights
    comp["policy_weights"] = _policy_weight_bytes(shape, s, wb)
    comp["reference_weights"] = P * wb if (f.reference and full and not s.precompute_ref) else 0

    # trainable parameters, gradients, optimizer state
    trainable, tw = _trainable(shape, s, w, wb)
    comp["trainable_parameters"] = 0 if full else trainable * tw  # full: they are the policy weights
    grads = trainable * tw
    if d.kind == "cuda":
        opt = trainable * 2 + trainable * 4 // 2048  # paged 8-bit AdamW: two 1-byte moments + block scales
    else:
        opt = 2 * trainable * tw  # AdamW's moments, in the parameters' dtype

    # activations (elements per token). With checkpointing the forward keeps each layer's input
    # ("inputs"); one layer's internals ("layer") exist only while that layer is recomputed for
    # backward, after the LM head's tiles are freed. SFT keeps the adapters' dropout too: each
    # adapted linear saves its dropped-out input and the mask (TRL's DPO turns dropout off).
    coef = ACT[s.plan]
    dropout = N * shape.linear_in_active / L * (wb + 1) if (f.adapter_dropout and not full) else 0
    masked = 0.0  # per layer, kept for backward (see MASKED_ATTENTION_SCORES)
    if d.kind == "cuda" and w.padded(s.micro_batch):
        repeated = 2 * shape.heads * shape.head_dim if shape.kv_heads < shape.heads else 0
        masked = N * (MASKED_ATTENTION_SCORES * shape.heads * w.peak_length() + repeated) * wb
    attn, mlp_width = shape.q_out + 2 * shape.kv_out, shape.mlp_width
    # counted per layer, not fitted: what an activation written out in torch operations keeps (gelu_new),
    # and the model's own dropout where the stage keeps it (see ATTN_DROPOUT_SCORES)
    own = N * activation_saved(shape.activation) * shape.intermediate * wb
    if f.adapter_dropout:
        scores = ATTN_DROPOUT_SCORES * shape.heads * w.peak_length() * wb if d.kind == "cpu" else 0
        mask = wb if d.kind == "cpu" else 1
        own += N * (scores * (shape.attn_dropout > 0) + HIDDEN_DROPOUT_ELEMENTS * h * mask * (shape.hidden_dropout > 0))
    if s.gradient_checkpointing:
        act = N * coef["inputs"] * L * h * wb
        # the layer being recomputed: its norms and residuals scale with the width, its attention with
        # the query, key and value projections' widths, its MLP (gate and up, or one up projection,
        # what they give and the gradients of each) with the MLP's own width times its up projections
        mlp = coef["layer_mlp_dpo" if f.sequences > 1 else "layer_mlp"]  # pairs: chosen and rejected together
        act_layer = (N * (coef["layer"] * h + coef["layer_attn"] * attn + mlp * mlp_width) * wb + dropout + masked
                     + own)
    else:
        act = N * (coef["nogc"] * h + coef["nogc_attn"] * attn + coef["nogc_mlp"] * mlp_width) * L * wb
        act += (dropout + masked + own) * L
        act_layer = 0
    width = min(MAX_TILE_WIDTH, -(-shape.vocab // 64) * 64)
    # on CUDA, TRL's Triton path keeps one tile; its torch fallback on CPU keeps several temporaries
    copies = 1.0 if d.kind == "cuda" else coef["tiles_dpo" if f.sequences > 1 else "tiles_sft"]
    tile = min(N, TOKEN_TILE) * width * wb * copies
    head_grad = shape.vocab * h * tw if (full and not shape.tied) else 0
    quant = shape.intermediate * shape.hidden * wb if m.quantize else 0  # one weight dequantized

    optimizer_step = grads * (1 + OPTIMIZER_STEP_TEMPS)
    at = {  # what is alive at each moment besides the weights and the optimizer state (ties: the first)
        "start of backward": dict(gradients=head_grad, activations=act, logits=tile, quantization_buffers=0),
        # the last layers' backward (the first layers of the model): nearly every gradient already exists
        "backward through a layer": dict(gradients=grads, activations=act + act_layer, logits=0,
                                         quantization_buffers=quant),
        "optimizer step": dict(gradients=optimizer_step, activations=0, logits=0, quantization_buffers=0),
    }
    held = comp["policy_weights"] + comp["reference_weights"] + comp["trainable_parameters"] + opt
    moments = {name: int(held + sum(parts.values())) for name, parts in at.items()}
    moment = max(moments, key=moments.get)
    comp.update(at[moment])
    comp["optimizer_state"] = opt
    n = max(1, w.gpus)
    if n > 1 and w.shard in ("fsdp", "zero3"):
        # each device keeps 1/n of the weights, gradients and optimizer state, and gathers the whole
        # of one layer to compute it (and prefetches the next); activations and logits are not split
        layer_bytes = comp["policy_weights"] // max(1, shape.layers)
        for k in ("policy_weights", "reference_weights", "trainable_parameters", "optimizer_state"):
            comp[k] = comp[k] // n
        if moment == "optimizer step":
            comp["gradients"] = comp["gradients"] // n
        comp["gathered_layers"] = 2 * layer_bytes
    elif n > 1:
        comp["gradient_buckets"] = grads  # DDP's flat all-reduce buckets: one more copy of the gradients
    dynamic = sum(v for k, v in comp.items() if k not in ("policy_weights", "reference_weights",
                                                          "trainable_parameters"))
    comp["framework_overhead"] = int(CUDA_CONTEXT + ALLOCATOR_SLACK * dynamic) if d.kind == "cuda" else 0
    comp = {k: int(v) for k, v in comp.items()}
    return {"peak_bytes": sum(comp.values()), "components": comp, "moment": moment,
            "allocated_bytes": sum(comp.values()) - comp["framework_overhead"],
            "moments": moments}  # one device, before sharding and overhead (for bench/plan_fit.py)


# --------------------------------------------------------------------------- time

# Seconds of a step, term by term: each is a count of what the step does (step_work) times a
# cost per unit (TIME). Matmul FLOPs are divided by the probed FLOP/s first, so "dense",
# "q4" (4-bit layers' matmuls after dequantization) and "attention" are multiples of the
# ideal matmul time; the rest are seconds per unit:
#   weight_read     a weight element read by one matmul pass (small batches are bandwidth-bound)
#   dequant         a 4-bit weight dequantized (QLoRA: every forward, recomputation, backward)
#   dequant_large   the same for a weight whose fp32 copy is over 32 MiB (a 7 B model's): not
#                   fitted (no measured shape has one) but measured directly, bitsandbytes'
#                   dequantize_4bit on a 4096 x 11008 NF4 weight on this CPU, median of 5
#   q4_layer_pass   fixed cost of a decoder layer's pass through bitsandbytes' 4-bit layers
#   elementwise     a token x (hidden + intermediate) element of a decoder layer pass (norms,
#                   activations, residuals, rotary embeddings)
#   lora_elementwise  a token x output element of an adapter (scale, add)
#   dropout         a token x input element masked by the adapters' dropout (SFT only: TRL's
#                   DPO turns dropout off)
#   layer_pass / lora_layer_pass  fixed cost of one decoder layer's pass (kernel launches,
#                   autograd bookkeeping), and the extra for its adapters
#   per_logit       a vocabulary logit scored (the LM head's log-softmax, forward and backward)
#   per_logit_tile  the same, scaled by the tile's token count / 4096 (large tiles are slower)
#   per_trainable   a trainable parameter's optimizer update
#   elementwise_large   a token x (MLP width, or hidden) element of a layer pass where that tensor is over
#                   LARGE_TENSOR_BYTES (out of cache, and mapped afresh on every allocation)
#   per_logit_large the same for a logit, where a tile's logits are over LARGE_TENSOR_BYTES
#   activation_kernels  a token x intermediate element of a kernel the activation runs beyond a fused
#                   one (counted by activation_kernels: GPT-2's gelu_new, written out in torch operations)
#   attention_scores  an attention score of a layer pass where the model's own attention dropout is on
#                   (SFT), which sends CPU attention to the math kernel that materializes the scores
# CPU: fitted by non-negative least squares on relative error to the measured steps of real TRL
# runs on a 2-core AMD EPYC (bench/plan_accuracy.py --raw: 3 steps under the memory tracker, then 4
# timed without it, the fastest of the last 3; then bench/plan_fit.py), twelve shapes, refitted
# 2026-12-03 on one full run of the grid taken with the heap a CPU training process now has
# (engine.heap: freed memory reused, no fresh mmap for each block over 32 MiB): 167 points fitted, 36
# held back (bench/results/plan_accuracy-2026-12-03-heap.jsonl, one point dropped: measured while
# tests ran beside it). Matmul probe 189 GFLOP/s (the terms in seconds are stored at PROBE_REFERENCE's
# 132). Worst error 33 % in the fit (mean 9 %), 26 % on the held-back points, 13-32 % on a shape left
# out but `tiny` (72 %: its steps are mostly per-call costs no other shape pins down). With the heap
# the *_large terms (pages of a fresh mapping zero-filled every step) fitted to 0, and the logit
# costs halved. Fitted on one run, the coefficients carry that run's hour of a shared machine (fits
# to different runs moved some terms by an order of magnitude; a point's residuals in two runs
# correlate at 0.2); the fits before this one are in docs/planner-accuracy.md. (Until 2026-12-02 the
# costs were fitted to steps timed under the tracker, which sees every operator in Python.)
# The step times of that shared machine are noisy: the same step varies by 10-20 % within a point
# and 0.5-1.7x between runs hours apart. The 4-bit costs are scaled by each machine's own
# probe (q4_probe, probe_scales), and the terms in seconds by the matmul probe (SECONDS_TERMS).
# CUDA: typical figures, not fitted; checked once, on an H200 (bench/gpu_check.py): 8 B-class steps
# took 0.6-1.8x the prediction, a 1 B model's up to 4x.
TIME = {
    "cpu": {"dense": 1.01, "q4": 1.01, "attention": 2.86, "weight_read": 3.09e-10, "dequant": 8.41e-10,
            "dequant_large": 9.9e-10, "elementwise": 6.76e-9, "lora_elementwise": 2e-9, "dropout": 1.08e-8,
            "layer_pass": 1.2e-3, "lora_layer_pass": 3.27e-3, "q4_layer_pass": 0.0, "per_logit": 8.79e-9,
            "per_logit_tile": 1.21e-8, "per_trainable": 1.44e-9, "elementwise_large": 0.0,
            "per_logit_large": 0.0, "activation_kernels": 3.32e-10, "attention_scores": 1.63e-8},
    "cuda": {"dense": 2.2, "q4": 2.2, "attention": 2.2, "weight_read": 0.0, "dequant": 3e-12,
             "dequant_large": 3e-12, "elementwise": 1e-11, "lora_elementwise": 5e-12, "dropout": 1e-11,
             "layer_pass": 1.5e-4, "lora_layer_pass": 5e-5, "q4_layer_pass": 5e-5, "per_logit": 1e-11,
             "per_logit_tile": 0.0, "per_trainable": 3e-11, "elementwise_large": 0.0, "per_logit_large": 0.0,
             "activation_kernels": 1e-11, "attention_scores": 0.0},
}
FLOP_TERMS = ("dense", "q4", "attention")


# QLoRA is recommended over a full-precision plan that fits only when predicted this much faster
QLORA_ONLY_IF_FASTER = {"cpu": 1.5, "cuda": 1.4}


# An fp32 tensor beyond this no longer stays in cache, and is past glibc's largest mmap threshold: each
# one is mapped afresh and paged in by the OS, so a pass over it costs more than over a small one. It
# splits 4-bit weights' dequantized copies (dequant / dequant_large) and activations (the *_large terms:
# a micro-batch's tokens x the MLP's width or hidden, a tile's logits).
LARGE_TENSOR_BYTES = 32 * 2**20


def _quantized_weights(shape: ModelShape, large: bool) -> int:
    """4-bit weights in linear layers whose dequantized copy is (not) larger than LARGE_TENSOR_BYTES."""
    return sum(size * n for size, n in shape.linear_sizes() if (size * 4 > LARGE_TENSOR_BYTES) == large)


def step_work(shape: ModelShape, s: Strategy, w: Workload, forward_only: bool = False) -> dict:
    """What one micro-step does, counted in the units of TIME (FLOPs for the matmul terms);
    ``forward_only``: a single no-grad forward (the precomputed reference log-probs)."""
    seq = w.padded_length(s.micro_batch)
    N = _tokens(w, s.micro_batch, seq)
    f, m = w.factors, methods.get(s.plan)
    # no-grad forwards, in units of the trained tokens: the reference (unless precomputed) and the stage's own
    ref = (0 if s.precompute_ref else f.reference_passes) + f.extra_forwards
    gc = 1 if s.gradient_checkpointing else 0
    full = not m.adapters
    # forward, the recomputation of checkpointing, backward (weight gradients only for full), reference forward
    body_passes = 1 + gc + (2 if full else 1) + ref
    head_passes = 1 + (2 if full else 1) + ref
    layer_passes = 1 + gc + 1 + ref  # forward, recomputation, backward, reference
    logit_passes = 2 + ref  # forward and backward of the log-softmax, reference forward
    if forward_only:
        body_passes = head_passes = layer_passes = logit_passes = 1
    body = 2 * N * shape.params_linear_active * body_passes  # a MoE: the routed experts only
    fwd_kernels, bwd_kernels = activation_kernels(shape.activation)

    def large(elements: float) -> int:
        return int(elements * 4 > LARGE_TENSOR_BYTES)  # fp32 on the CPU
    head = 2 * N * shape.vocab * shape.hidden * head_passes
    logits = N * shape.vocab * logit_passes
    adapters = not full and not forward_only  # the reference forward runs with the adapters off
    return {
        "dense": head + (0 if m.quantize else body),
        "q4": body if m.quantize else 0,
        "attention": 2 * N * shape.layers * seq * shape.q_out * (body_passes + 1),
        "weight_read": shape.params_matrices * (body_passes + (1 if adapters else 0)),
        "dequant": _quantized_weights(shape, large=False) * layer_passes if m.quantize else 0,
        "dequant_large": _quantized_weights(shape, large=True) * layer_passes if m.quantize else 0,
        "elementwise": N * (shape.hidden + shape.intermediate) * shape.layers * layer_passes,
        "lora_elementwise": N * shape.linear_out_active * layer_passes
        if adapters else 0,
        "dropout": N * shape.linear_in_active * (1 + gc)
        if (adapters and f.adapter_dropout and not forward_only) else 0,
        "layer_pass": layer_passes * shape.layers,
        "lora_layer_pass": layer_passes * shape.layers if adapters else 0,
        "q4_layer_pass": layer_passes * shape.layers if m.quantize else 0,
        "per_logit": logits,
        "per_logit_tile": logits * min(N, TOKEN_TILE) / TOKEN_TILE,
        "per_trainable": 0 if forward_only else _trainable(shape, s, w, 4)[0],
        # tensors too large for the cache, each one a fresh allocation the OS pages in (see LARGE_TENSOR_BYTES)
        "elementwise_large": shape.layers * layer_passes * (
            N * shape.mlp_width * large(N * shape.intermediate) + N * shape.hidden * large(N * shape.hidden)),
        "per_logit_large": logits * large(min(N, TOKEN_TILE) * shape.vocab),
        # an activation written out in torch operations (GPT-2's gelu_new): its extra kernels, counted
        "activation_kernels": N * shape.intermediate * shape.layers * (
            fwd_kernels * (1 if forward_only else layer_passes - 1) + (0 if forward_only else bwd_kernels)),
        # the model's own attention dropout (SFT) sends CPU attention to the math kernel: its score elements
        "attention_scores": s.micro_batch * f.sequences * shape.heads * seq * seq * shape.layers * layer_passes
        if (f.adapter_dropout and shape.attn_dropout > 0 and not forward_only) else 0,
    }


def time_terms(shape: ModelShape, s: Strategy, w: Workload, d: Device, forward_only: bool = False) -> dict:
    """Predicted seconds of one micro-step (or of one forward), by term (the keys of TIME)."""
    k = TIME[d.kind]
    if d.kind == "cpu":  # this CPU's own 4-bit costs
        scales = probe_scales(d.probe)
        k = {name: cost * scales.get(name, 1.0) for name, cost in k.items()}
    rate = d.flops or (2e11 if d.kind == "cpu" else 2e14)
    work = step_work(shape, s, w, forward_only)
    return {name: work[name] * (cost / rate if name in FLOP_TERMS else cost) for name, cost in k.items()}


def predict_seconds(shape: ModelShape, s: Strategy, w: Workload, d: Device) -> float:
    return sum(time_terms(shape, s, w, d).values())


SHARDING = {"none": "DDP: a full copy on every device", "fsdp": "FSDP: weights, gradients and optimizer state split",
            "zero3": "DeepSpeed ZeRO-3: weights, gradients and optimizer state split"}
INTERCONNECT_BYTES_PER_SECOND = 10e9  # PCIe-class link between GPUs (assumed, not measured)


def communication_seconds(shape: ModelShape, s: Strategy, w: Workload, d: Device, accum: int) -> float:
    """Per optimizer step: DDP all-reduces the gradients once; FSDP / ZeRO-3 gathers the weights
    twice (forward, backward) and reduce-scatters the gradients every micro-step."""
    n = max(1, w.gpus)
    if n == 1:
        return 0.0
    ring = 2 * (n - 1) / n
    trainable, tw = _trainable(shape, s, w, d.width)
    grad_bytes = trainable * tw
    if w.shard in ("fsdp", "zero3"):
        per_micro = (2 * _policy_weight_bytes(shape, s, d.width) + grad_bytes) * (n - 1) / n
        return accum * per_micro / INTERCONNECT_BYTES_PER_SECOND
    return ring * grad_bytes / INTERCONNECT_BYTES_PER_SECOND


def forward_seconds(shape: ModelShape, s: Strategy, w: Workload, d: Device) -> float:
    """One no-grad forward of a micro-batch through the plan's model with adapters off (the
    reference log-probs, computed once before training)."""
    return sum(time_terms(shape, s, w, d, forward_only=True).values())


# --------------------------------------------------------------------------- planning

@dataclass
class StrategyResult:
    strategy: Strategy
    fits: bool
    peak_bytes: int
    components: dict
    moment: str
    seconds_per_step: float
    total_seconds: float | None
    steps: int | None
    why: str

    def to_json(self) -> dict:
        return {"name": self.strategy.name, **asdict(self.strategy), "fits": self.fits,
                "peak_bytes": self.peak_bytes, "components": self.components, "moment": self.moment,
                "seconds_per_step": self.seconds_per_step, "total_seconds": self.total_seconds,
                "steps": self.steps, "why": self.why}


@dataclass
class PlanResult:
    shape: ModelShape
    workload: Workload
    device: Device
    strategies: list[StrategyResult] = field(default_factory=list)
    recommended: StrategyResult | None = None
    note: str | None = None  # why the recommendation is not simply the fastest plan
    refused: str | None = None  # why nothing is recommended although something fits (an unknown architecture)

    @property
    def usable_bytes(self) -> int:
        return int(self.device.budget_bytes * (1 - self.device.margin))

    def to_json(self) -> dict:
        return {"budget_bytes": self.device.budget_bytes, "usable_bytes": self.usable_bytes,
                "device": asdict(self.device), "model": asdict(self.shape), "workload": self.workload.summary(),
                "strategies": [r.to_json() for r in self.strategies],
                "gpus": self.workload.gpus, "shard": self.workload.shard,
                "recommended": self.recommended.strategy.name if self.recommended else None,
                "note": self.note, "refused": self.refused, "warnings": self.warnings(),
                "time_uncertainty": time_uncertainty(self.device)}

    def warnings(self) -> list[str]:
        """What the plan had to assume, and inputs past what the model can take."""
        out = [f"assumed {a}" for a in self.shape.assumed]
        if not self.shape.supported:
            out.append(f"{self.shape.model_type!r} is not an architecture rounds knows: the layers are a "
                       "Llama-style estimate")
        top = self.shape.max_positions
        if top and self.workload.max_length > top:
            out.append(f"--max-length {self.workload.max_length} is more than the model's context "
                       f"(max_position_embeddings {top:,}): examples that long will fail or degrade")
        return out

    def table(self, model: str, show_all: bool = False) -> str:
        """The text `rounds plan` prints: every plan's best strategy (``show_all``: every strategy),
        peak and time, why it does or does not fit, and the recommended flags."""
        result, w, d, shape = self, self.workload, self.device, self.shape
        lines = []
        size = f"{w.examples:,} {stages.get(w.stage).unit} x {w.epochs:g} epoch" if w.examples else \
            "no data size given (--pairs N or --data FILE for a total)"
        lines.append(f"{model}: {shape.describe()}")
        lines += [f"warning: {x}" for x in self.warnings()]
        lines.append(f"{w.stage.upper()} on {d.name or d.kind}: {human_bytes(d.budget_bytes)}, "
                     f"{human_bytes(result.usable_bytes)} usable ({d.margin:.0%} kept free); "
                     f"max length {w.max_length}, batch {w.batch}, {size}")
        if w.lengths:
            seen = w.summary()["lengths"]
            lines.append(f"lengths from the data ({seen['examples_sampled']:,} examples' tokens): longest "
                         f"{seen['longest']}, median {seen['median']}; memory for the longest, time for "
                         f"the typical padded batch")
        else:
            lines.append(f"every example taken as {w.max_length} tokens (give --data FILE with a model folder "
                         "for the data's own lengths)")
        if w.gpus > 1:
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
                rows.append(min(fit, key=lambda r: r.seconds_per_step) if fit
                            else min(group, key=lambda r: r.peak_bytes))
        lines.append(f"  {'strategy':<20}{'peak':>10}  {'fits':<5}{'s/step':>9} {'total':>11}  why")
        for r in rows:
            mark = "*" if r is result.recommended else " "
            lines.append(f"{mark} {r.strategy.name:<20}{human_bytes(r.peak_bytes):>10}  "
                         f"{'yes' if r.fits else 'no':<5}{format_seconds(r.seconds_per_step):>9} "
                         f"{format_seconds(r.total_seconds):>11}  {r.why}")
        if result.recommended:
            rec = result.recommended
            c = rec.components
            parts = ", ".join(f"{k.replace('_', ' ')} {human_bytes(v)}" for k, v in c.items() if v)
            lines.append(f"recommended: {rec.strategy.name} (gradient checkpointing "
                         f"{'on' if rec.strategy.gradient_checkpointing else 'off'}): {parts}")
            accum = max(1, -(-w.batch // (rec.strategy.micro_batch * w.gpus)))
            s = rec.strategy
            flags = plan_flags(s.plan, s.precompute_ref, s.gradient_checkpointing, s.micro_batch, accum)
            lines.append(f"  train it with: rounds train {w.stage} {flags}"
                         + (f"   (per GPU, {w.gpus} processes)" if w.gpus > 1 else "   (or --plan auto)"))
            if result.note:
                lines.append(f"  note: {result.note}")
        elif result.refused:
            lines.append(f"{result.refused}: {GENERIC_HINT}")
        else:
            lines.append("nothing fits this budget: shorten --max-length, or use a bigger device")
        lines.append(f"times: {time_uncertainty(d)}")
        return "\n".join(lines)


def time_uncertainty(d: Device, now: float | None = None) -> str:
    if d.kind == "cpu" and d.calibrated:
        text = ("±50% (matmul throughput measured on this CPU; step model fitted to 167 real steps of twelve "
                "shapes from one run on a shared 2-core CPU, its per-call seconds carried to others by the "
                "matmul probe: worst error 33% in the fit, 26% on held-back points, 13-32% on a shape left out "
                "(72% for the smallest); a fresh run of 204 steps: worst 35%, mean 10%; models far larger than its "
                "≤ 60 M-parameter shapes are an extrapolation)")
        p = d.probe or {}
        if isinstance(p.get("time"), (int, float)):
            age = format_seconds(max(0.0, (time.time() if now is None else now) - p["time"]))
            others = p.get("others_busy")
            busy = f", other processes using {others:.0%} of the CPU" if isinstance(others, (int, float)) else ""
            text += (f"; probe taken {age} ago at load {p.get('load', '?')} a core{busy} "
                     "(--refresh-probe to take it again)")
            scales = probe_scales(p)
            if "q4_layer_pass" in scales:
                text += (f"; 4-bit layers probed too: {scales['q4_layer_pass']:.1f}x the cost on the machine "
                         "their reference probe was taken on")
            if any(isinstance(p.get(k), (int, float)) and p[k] > BUSY for k in ("load", "others_busy")):
                text += " — taken on a busy machine: times may be too long"
        return text
    if d.calibrated:
        return ("GPU throughput measured, but the GPU step costs are typical values, not fitted: on an H200 "
                "(bench/gpu_check.py) 8 B-class steps took 0.6-1.8x the prediction and a 1 B model's up to 4x")
    return (f"±60% (no throughput measured for this GPU: the typical throughput of {d.typical or 'a GPU'} "
            f"({d.flops / 1e12:.0f} TFLOP/s) was assumed)")


def human_params(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"



def explain(shape: ModelShape, r: StrategyResult, w: Workload, usable: int) -> str:
    c = r.components
    biggest = max(c.items(), key=lambda kv: kv[1])
    s = r.strategy
    if r.fits:
        when = "during" if r.moment.startswith("backward through") else "at the"
        return f"peak {human_bytes(r.peak_bytes)} {when} {r.moment}, {human_bytes(usable - r.peak_bytes)} to spare"
    if c["reference_weights"] and c["reference_weights"] + c["policy_weights"] > 0.35 * r.peak_bytes:
        width = "bf16" if c["policy_weights"] == shape.params_total * 2 else "fp32"
        return (f"needs {human_bytes(r.peak_bytes)}: two {width} copies of "
                f"{human_params(shape.params_total)} parameters "
                f"(policy + frozen reference) = {human_bytes(c['policy_weights'] + c['reference_weights'])}")
    state = c["policy_weights"] + c["gradients"] + c["optimizer_state"]
    if not methods.get(s.plan).adapters and state > 0.5 * r.peak_bytes:
        return (f"needs {human_bytes(r.peak_bytes)}: full training keeps weights, gradients and optimizer state "
                f"for {human_params(shape.params_total)} parameters "
                f"({human_bytes(state)})")
    names = {"activations": "activations", "logits": "LM-head tiles", "policy_weights": "weights",
             "optimizer_state": "optimizer state", "gradients": "gradients"}
    return (f"needs {human_bytes(r.peak_bytes)}, over the {human_bytes(usable)} usable; largest part: "
            f"{names.get(biggest[0], biggest[0])} {human_bytes(biggest[1])} (micro-batch {s.micro_batch}, "
            f"{w.peak_length()} tokens" + (f", x{w.factors.sequences} sequences an example)" if w.factors.sequences > 1
                                            else ")"))


def generic_refusal(shape: ModelShape) -> str:
    return (f"rounds does not know the {shape.model_type!r} architecture: its layers were estimated as a "
            "Llama-style decoder's, so no plan is recommended")


GENERIC_HINT = ("pass --assume-generic to take the estimate anyway (check the first steps' memory in the "
                "Monitor), or choose a plan yourself with --plan")


def plan(shape: ModelShape, w: Workload, d: Device, plans=tuple(methods.METHODS),
         max_micro_batch: int | None = None, assume_generic: bool = False) -> PlanResult:
    result = PlanResult(shape, w, d)
    if w.gpus < 1:
        raise UserError("--gpus must be at least 1", field="--gpus")
    if w.shard not in SHARDING:
        raise UserError(f"unknown sharding {w.shard!r}", field="--shard", hint=f"use one of: {', '.join(SHARDING)}")
    if w.gpus > 1 and d.kind != "cuda":
        raise UserError("--gpus is for GPUs: plan a CPU run with --device cpu alone", field="--gpus")
    least = stages.get(w.stage).min_micro_batch  # KTO: two examples, for its KL estimate
    top = max(least, max_micro_batch or max(1, math.ceil(w.batch / w.gpus)))
    micro = [m for m in (1, 2, 4, 8, 16, 32, 64) if least <= m <= top]
    for p in plans:
        for pre in ((False, True) if w.factors.reference else (False,)):
            for gc in (True, False):
                for m in micro:
                    r = strategy_result(shape, Strategy(p, pre, gc, m), w, d)
                    if r.total_seconds is not None and pre:  # the one-off reference pass over the data
                        r.total_seconds += (w.examples / (m * w.gpus)) * forward_seconds(
                            shape, Strategy(p, pre, False, m), w, d)
                    result.strategies.append(r)
    fitting = [r for r in result.strategies if r.fits]
    if fitting:
        def cost(r: StrategyResult) -> tuple:
            return (r.total_seconds or r.seconds_per_step, r.peak_bytes)

        fastest = min(fitting, key=cost)
        exact = [r for r in fitting if not methods.get(r.strategy.plan).quantize]
        result.recommended = fastest
        if methods.get(fastest.strategy.plan).quantize and exact:
            # 4-bit weights change the model being trained, not only its speed: QLoRA is taken when
            # nothing else fits, or when it is clearly faster (beyond the time estimate's error)
            best_exact = min(exact, key=cost)
            if cost(best_exact)[0] <= QLORA_ONLY_IF_FASTER[d.kind] * cost(fastest)[0]:
                result.recommended = best_exact
                fast, exact_s = format_seconds(cost(fastest)[0]), format_seconds(cost(best_exact)[0])
                result.note = (f"{fastest.strategy.name} is predicted faster ({fast} vs {exact_s}) but quantizes "
                               "the weights to 4 bits; within the estimate's error that is not worth it "
                               "(--plan qlora to insist)")
    if not shape.supported and not assume_generic:
        result.refused = generic_refusal(shape)
        result.recommended = None
    return result


def nearest_fitting(result: PlanResult, wanted: Strategy) -> StrategyResult | None:
    """For a refused explicit plan: the fitting strategy that changes the fewest choices."""
    fitting = [r for r in result.strategies if r.fits]
    if not fitting:
        return None

    def distance(r: StrategyResult) -> tuple:
        s = r.strategy
        changes = (s.plan != wanted.plan) * 4 + (s.precompute_ref != wanted.precompute_ref) \
            + (s.gradient_checkpointing != wanted.gradient_checkpointing) + (s.micro_batch != wanted.micro_batch)
        return (changes, r.seconds_per_step)

    return min(fitting, key=distance)


# --------------------------------------------------------------------------- devices and training

def detect_device(device: str = "auto", budget_bytes: int | None = None, refresh: bool = False) -> Device:
    """The device a run will use, from NVML (no torch import): the first GPU's memory, or the
    available RAM on CPU. ``budget_bytes`` overrides the memory (e.g. to act as a 12 GB card)."""
    if device in ("auto", "cuda"):
        from engine.probe import SystemProbe

        gpus = SystemProbe().gpus()
        if gpus and gpus[0].get("mem_total"):
            gpu = gpus[0]
            return calibrate_cuda(budget_bytes or gpu["mem_total"], name=gpu.get("name", "GPU"), refresh=refresh)
        if device == "cuda":
            raise UserError("--device cuda, but no NVIDIA GPU is visible (NVML found none)", field="--device",
                            hint="check `nvidia-smi`, or plan for --device cpu")
    return calibrate_cpu(budget_bytes, refresh=refresh)


def strategy_result(shape: ModelShape, s: Strategy, w: Workload, d: Device) -> StrategyResult:
    usable = int(d.budget_bytes * (1 - d.margin))
    mem = predict_memory(shape, s, w, d)
    accum = max(1, math.ceil(w.batch / (s.micro_batch * max(1, w.gpus))))  # --batch is the global batch
    sps = predict_seconds(shape, s, w, d) * accum + communication_seconds(shape, s, w, d, accum)
    steps = math.ceil(w.examples * w.epochs / max(1, w.batch)) if w.examples else None
    r = StrategyResult(s, mem["peak_bytes"] <= usable, mem["peak_bytes"], mem["components"], mem["moment"], sps,
                       steps * sps if steps else None, steps, "")
    r.why = explain(shape, r, w, usable)
    return r
