"""Planner: exact parameter counts, component arithmetic, the user's 7 B / 12 GiB case, CLI, --plan auto."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_rounds
from engine import plan as pl
from engine.errors import UserError
from engine.session import read_session_json
from engine.shapes import ModelShape, read_config

FIXTURES = ROOT / "tests" / "fixtures" / "configs"
# Published parameter counts of the real models whose config.json the fixtures hold.
PUBLISHED = {
    "llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248, "llama-3.2-1b": 1_235_814_400,
    "mistral-7b-v0.1": 7_241_732_096, "qwen2.5-7b": 7_615_616_512, "qwen2.5-0.5b": 494_032_768,
    "phi-3-mini-4k": 3_821_079_552, "gemma-2-2b": 2_614_341_888, "gemma-2-9b": 9_241_705_984,
}
GiB = 2**30


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(read_config(FIXTURES / f"{name}.json"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_is_exact(name):
    s = shape(name)
    assert s.supported
    assert s.params_total == PUBLISHED[name]


ALL_CONFIGS = sorted(f.stem for f in FIXTURES.glob("*.json"))
KNOWN_LAYERS = {"mixtral-8x7b": "mixtral", "qwen1.5-moe-a2.7b": "qwen2_moe", "pythia-1b": "gpt_neox",
                "gpt2": "gpt2", "falcon-7b": "falcon", "qwen3-8b": "qwen3", "olmo-2-7b": "olmo2",
                "llava-1.5-7b": "llama", "qwen2-vl-2b": "qwen2", "gemma-3-4b": "gemma3_text"}


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_count_matches_the_model_instantiated_on_meta(name):
    """Every fixture — dense, mixture-of-experts, non-gated MLPs, vision-language — counted as
    transformers builds it (on the meta device: no weights, no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from engine.shapes import read_shape

    raw = json.loads((FIXTURES / f"{name}.json").read_text())
    cfg = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype",
                                                                          "transformers_version")})
    with torch.device("meta"):
        model = (AutoModelForImageTextToText if "vision_config" in raw else AutoModelForCausalLM).from_config(cfg)
    s = read_shape(FIXTURES / f"{name}.json")
    assert sum(p.numel() for p in model.parameters()) == s.params_total
    assert s.supported and s.model_type == KNOWN_LAYERS.get(name, s.model_type)


def test_new_families_say_what_they_are():
    from engine.shapes import read_shape

    mix = read_shape(FIXTURES / "mixtral-8x7b.json")
    assert mix.experts == 8 and mix.experts_active == 2
    assert round(mix.params_active / 1e9, 1) == 12.9  # Mixtral-8x7B's published 12.9 B active
    assert "8 experts, 2 a token: 12.88 B active" in mix.describe()
    # transformers 5 keeps experts as fused tensors: 4-bit quantizes the attention only
    assert mix.params_linear < 2e9 and mix.params_total - mix.params_linear > 44e9
    moe = read_shape(FIXTURES / "qwen1.5-moe-a2.7b.json")
    assert round(moe.params_active / 1e9, 1) == 2.7  # "A2.7B"
    pythia = read_shape(FIXTURES / "pythia-1b.json")
    assert not pythia.gated and pythia.params_total == 1_011_781_632  # no longer +28 % as a gated MLP
    llava = read_shape(FIXTURES / "llava-1.5-7b.json")
    assert llava.container == "llava" and llava.params_extra > 3e8
    assert llava.describe().startswith("llava (language model llama), 7.06 B parameters; with vision tower")


@pytest.mark.parametrize("name", ["gpt2", "pythia-1b", "falcon-7b", "phi-3-mini-4k", "mixtral-8x7b",
                                  "qwen1.5-moe-a2.7b", "llama-3-8b", "qwen3-8b", "gemma-2-2b"])
def test_lora_count_matches_peft_on_a_built_model(name):
    """LoRA on all linear layers, as PEFT counts it on the real (shrunk) architecture: fused qkv and
    gate_up (Phi-3, GPT-2, GPT-NeoX, Falcon), Mixtral's fused experts (adapted), Qwen2-MoE's (not)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads((FIXTURES / f"{name}.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=40000)
    if name == "gpt2":
        cfg.update(n_embd=64, n_layer=2, n_head=4, n_inner=96)
    if name == "falcon-7b":
        cfg.update(ffn_hidden_size=96)
    for k, v in (("num_key_value_heads", 2), ("head_dim", 16), ("ffn_hidden_size", 96)):
        if k in cfg:
            cfg[k] = v
    if name.startswith("qwen1.5"):
        cfg.update(moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=6)
    s = ModelShape.from_config(cfg)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert sum(p.numel() for p in model.parameters()) == s.params_total
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert peft.get_nb_trainable_parameters()[0] == s.lora_params(4)


def test_tiny_model_count_matches_its_weights(tiny_model):
    info = json.loads((tiny_model / "rounds_tiny_model.json").read_text())
    assert ModelShape.from_config(read_config(tiny_model)).params_total == info["parameters"]


def test_tied_embeddings_and_gqa_are_counted():
    gemma, llama = shape("gemma-2-2b"), shape("llama-2-7b")
    assert gemma.tied and gemma.params_lm_head == 0 and gemma.kv_heads == 4 and gemma.norms_per_layer == 4
    assert not llama.tied and llama.params_lm_head == 32000 * 4096
    assert shape("qwen2.5-7b").qkv_bias


def test_unknown_architecture_is_a_labelled_generic_estimate():
    s = ModelShape.from_config({"model_type": "mystery", "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "vocab_size": 100, "intermediate_size": 128})
    assert not s.supported and "generic estimate" in s.describe()


def test_users_case_7b_dpo_on_12gib():
    s = shape("llama-2-7b")
    work = pl.Workload("dpo", max_length=1024, batch=1, examples=8484)
    device = pl.cuda_device(12 * GiB, name="12 GiB card")
    result = pl.plan(s, work, device)
    naive = next(r for r in result.strategies if r.strategy.name == "full mb1")
    assert naive.peak_bytes >= 24e9 and not naive.fits
    # the two bf16 copies alone, the user's 26 GB
    assert naive.components["policy_weights"] == naive.components["reference_weights"] == 6_738_415_616 * 2
    assert "two bf16 copies of 6.74 B parameters" in naive.why
    assert result.recommended is not None and result.recommended.fits
    assert result.recommended.strategy.plan == "qlora"
    assert result.recommended.peak_bytes <= 8 * GiB


def test_qlora_only_when_nothing_else_fits_or_clearly_faster(monkeypatch):
    """4-bit weights change the model: with room for full precision, a modest speed-up is not taken."""
    s = shape("llama-2-7b")
    work = pl.Workload("dpo", max_length=1024, batch=1, examples=8484)
    roomy = pl.cuda_device(80 * GiB, name="80 GiB card", flops=4e14)
    monkeypatch.setitem(pl.TIME, "cuda", dict(pl.TIME["cuda"], q4=pl.TIME["cuda"]["dense"] * 0.8))
    r = pl.plan(s, work, roomy)
    fastest = min((x for x in r.strategies if x.fits), key=lambda x: x.total_seconds)
    assert fastest.strategy.plan == "qlora" and r.recommended.strategy.plan != "qlora"
    assert "quantizes the weights to 4 bits" in r.note and "--plan qlora" in r.note
    monkeypatch.setitem(pl.TIME, "cuda", dict(pl.TIME["cuda"], q4=pl.TIME["cuda"]["dense"] * 0.1))
    r = pl.plan(s, work, roomy)
    assert r.recommended.strategy.plan == "qlora" and r.note is None  # clearly faster: taken
    # on 12 GiB only QLoRA fits, so it is recommended without a note
    tight = pl.plan(s, work, pl.cuda_device(12 * GiB, name="12 GiB card"))
    assert tight.recommended.strategy.plan == "qlora" and tight.note is None


def test_component_arithmetic():
    s = shape("llama-2-7b")
    cpu = pl.Device("cpu", 10**13, "fp32", 1e11)
    work = pl.Workload("dpo", 512, 1, lora_rank=16)
    full = pl.predict_memory(s, pl.Strategy("full", False, True, 1), work, cpu)["components"]
    pre = pl.predict_memory(s, pl.Strategy("full", True, True, 1), work, cpu)["components"]
    lora = pl.predict_memory(s, pl.Strategy("lora", False, True, 1), work, cpu)["components"]
    qlora = pl.predict_memory(s, pl.Strategy("qlora", False, True, 1), work, cpu)["components"]
    assert full["reference_weights"] == s.params_total * 4 and pre["reference_weights"] == 0
    assert lora["reference_weights"] == 0  # adapters off: no second copy
    assert full["optimizer_state"] == 2 * s.params_total * 4  # AdamW moments, fp32
    assert lora["trainable_parameters"] == s.lora_params(16) * 4
    # NF4: half a byte per quantized weight plus its constants, the rest unquantized
    assert qlora["policy_weights"] < lora["policy_weights"] / 4
    # LoRA rank 16 on every linear layer of Llama-2-7B: 39,976,960 adapter parameters (PEFT's count)
    assert s.lora_params(16) == 39_976_960
    # checkpointing keeps one layer's activations instead of all
    gc = pl.predict_memory(s, pl.Strategy("lora", False, True, 1), work, cpu)["components"]["activations"]
    nogc = pl.predict_memory(s, pl.Strategy("lora", False, False, 1), work, cpu)["components"]["activations"]
    assert nogc > 10 * gc
    # DPO runs chosen and rejected: twice the tokens of SFT (a length at which activations set the peak)
    small = shape("llama-3.2-1b")

    def act(stage, plan_):
        strategy = pl.Strategy(plan_, False, False, 1)
        return pl.predict_memory(small, strategy, pl.Workload(stage, 4096), cpu)["components"]["activations"]

    assert act("dpo", "full") == pytest.approx(2 * act("sft", "full"))
    # SFT's adapters also keep their dropout's input and mask (TRL's DPO turns dropout off)
    assert act("sft", "lora") > act("dpo", "lora") / 2


@pytest.mark.parametrize("text,expected", [("12GiB", 12 * GiB), ("12 GB", 12 * 10**9), ("12G", 12 * GiB),
                                           ("512MiB", 512 * 2**20), ("1.5GiB", int(1.5 * GiB)), ("2097152", 2 * 2**20)])
def test_parse_size(text, expected):
    assert pl.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["12XB", "twelve", "", "-3GiB", "0", "12", "0GiB"])  # #20: "0" planned for the CPU
def test_parse_size_rejects_nonsense(bad):
    with pytest.raises(UserError) as e:
        pl.parse_size(bad)
    assert e.value.field == "--gpu-mem" and "12GiB" in e.value.hint


def test_cli_plan_table_and_json():
    r = run_rounds("plan", "--model", str(FIXTURES / "llama-2-7b.json"), "--stage", "dpo", "--gpu-mem", "12GiB",
                   "--pairs", "8484")
    assert r.returncode == 0, r.stderr
    assert "two bf16 copies of 6.74 B parameters" in r.stdout and "recommended: qlora" in r.stdout
    assert "* qlora" in r.stdout
    r = run_rounds("plan", "--model", str(FIXTURES / "mistral-7b-v0.1.json"), "--stage", "sft", "--gpu-mem", "16GB",
                   "--json", "--batch", "4")
    data = json.loads(r.stdout)
    assert data["budget_bytes"] == 16 * 10**9
    assert {"name", "fits", "peak_bytes", "components", "seconds_per_step", "total_seconds", "why"} \
        <= set(data["strategies"][0])
    assert data["recommended"] in {s["name"] for s in data["strategies"] if s["fits"]}
    assert {"policy_weights", "reference_weights", "trainable_parameters", "gradients", "optimizer_state",
            "activations", "logits", "quantization_buffers", "framework_overhead"} \
        <= set(data["strategies"][0]["components"])


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent", "--stage", "sft"], "no such file"),
    (["--model", str(FIXTURES.parent), "--stage", "sft"], "no config.json"),
    (["--model", str(FIXTURES / "llama-2-7b.json"), "--stage", "sft", "--gpu-mem", "12XB"], "'12XB' is not a size"),
])
def test_cli_plan_bad_input(args, message):
    r = run_rounds("plan", *args)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_plan_nothing_fits_exits_1():
    r = run_rounds("plan", "--model", str(FIXTURES / "llama-3-8b.json"), "--stage", "dpo", "--gpu-mem", "2GiB")
    assert r.returncode == 1 and "nothing fits" in r.stdout


def test_train_auto_plan_is_recorded(tmp_path, tiny_model):
    root = tmp_path / "s"
    r = run_rounds("--sessions", str(root), "train", "sft", "--model", str(tiny_model), "--data",
                   str(ROOT / "engine" / "demo_data" / "sft_train.jsonl"), "--max-steps", "2", "--batch", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(auto); predicted peak" in r.stdout
    meta = read_session_json(next(root.iterdir()))
    plan = meta["plan"]
    assert plan["chosen_by"] == "auto" and plan["fits"] and plan["predicted_peak_bytes"] > 0
    assert plan["micro_batch"] * plan["grad_accum"] >= 4
    assert meta["config"]["plan"] == plan["name"] != "auto"
    event = next(e for e in map(json.loads, (next(root.iterdir()) / "events.jsonl").read_text().splitlines())
                 if e.get("kind") == "plan")
    assert event["predicted_peak_bytes"] == plan["predicted_peak_bytes"]
    # planned for the data's own lengths: the longest example the worker measured, not --max-length
    data = next(e for e in map(json.loads, (next(root.iterdir()) / "events.jsonl").read_text().splitlines())
                if e.get("kind") == "data")
    assert plan["planned_for"]["longest"] == data["tokens"]["total"]["max"] < meta["config"]["max_length"]


def test_padded_length_is_the_expected_longest_of_a_batch():
    w = pl.Workload("sft", max_length=1024, lengths=[10, 100])
    assert w.peak_length() == 100
    assert w.padded_length(1) == pytest.approx(55)  # one example: the mean
    assert w.padded_length(2) == pytest.approx(10 * 0.25 + 100 * 0.75)  # the longer of two draws
    dpo = pl.Workload("dpo", max_length=64, lengths=[10, 100])  # chosen and rejected padded together; capped
    assert dpo.peak_length() == 64 and dpo.padded_length(1) == pytest.approx(10 * 0.25 + 64 * 0.75)
    assert pl.Workload("sft", max_length=512).padded_length(4) == 512  # no data: the worst case


def test_plan_with_data_uses_its_lengths(tiny_model):
    data = str(ROOT / "engine" / "demo_data" / "sft_train.jsonl")
    common = ["--stage", "sft", "--device", "cpu", "--data", data, "--max-length", "512", "--batch", "8", "--json"]
    folder = json.loads(run_rounds("plan", "--model", str(tiny_model), *common).stdout)
    config_only = json.loads(run_rounds("plan", "--model", str(tiny_model / "config.json"), *common).stdout)
    assert folder["workload"]["lengths"]["longest"] < 64 and "lengths" not in config_only["workload"]
    by_name = {r["name"]: r for r in config_only["strategies"]}
    for r in folder["strategies"]:
        # a step's fixed per-layer cost stays; its token-bound work shrinks with the data's short examples
        assert r["seconds_per_step"] < 0.7 * by_name[r["name"]]["seconds_per_step"]
        assert r["peak_bytes"] < by_name[r["name"]]["peak_bytes"]
    text = run_rounds("plan", "--model", str(tiny_model), *common[:-1]).stdout
    assert "lengths from the data (400 examples' tokens): longest" in text


def test_explicit_plan_that_cannot_fit_is_refused_before_loading(tmp_path, tiny_model):
    root = tmp_path / "s"
    r = run_rounds("--sessions", str(root), "train", "dpo", "--model", str(tiny_model), "--data",
                   str(ROOT / "engine" / "demo_data" / "dpo_train.jsonl"), "--plan", "full", "--batch", "4",
                   "--mem-budget", "45MiB")
    assert r.returncode == 1
    assert "plan full mb4 will not fit" in r.stderr and "the nearest plan that fits" in r.stderr
    assert not root.exists() or not any(root.iterdir())  # no session, nothing loaded
    r = run_rounds("--sessions", str(root), "train", "dpo", "--model", str(tiny_model), "--data",
                   str(ROOT / "engine" / "demo_data" / "dpo_train.jsonl"), "--plan", "auto", "--batch", "4",
                   "--mem-budget", "60MiB", "--max-steps", "1", timeout=900)  # the reference pre-pass reads every pair
    assert r.returncode == 0, r.stdout + r.stderr
    meta = read_session_json(next(Path(root).iterdir()))
    assert meta["plan"]["predicted_peak_bytes"] <= 60 * 2**20 * 0.9


def test_auto_with_nothing_fitting_says_so(tmp_path, tiny_model):
    r = run_rounds("--sessions", str(tmp_path / "s"), "train", "sft", "--model", str(tiny_model), "--data",
                   str(ROOT / "engine" / "demo_data" / "sft_train.jsonl"), "--mem-budget", "1MiB")
    assert r.returncode == 1 and "no plan fits" in r.stderr


def test_zero3_over_four_devices_splits_weights_gradients_and_optimizer_not_activations():
    s = shape("llama-2-7b")
    d = pl.cuda_device(80 * GiB, name="80 GiB card", flops=4e14)
    for plan_name, pre in (("full", False), ("lora", True)):
        st = pl.Strategy(plan_name, pre, True, 1)
        one = pl.predict_memory(s, st, pl.Workload("dpo", 1024, 1), d)["components"]
        four = pl.predict_memory(s, st, pl.Workload("dpo", 1024, 1, gpus=4, shard="zero3"), d)["components"]
        for k in ("policy_weights", "reference_weights", "trainable_parameters", "optimizer_state"):
            assert four[k] == one[k] // 4, k
        for k in ("activations", "logits", "quantization_buffers"):
            assert four[k] == one[k], k
        # each device gathers one layer to compute it, and prefetches the next
        assert four["gathered_layers"] == 2 * (one["policy_weights"] // s.layers)
    # at the optimizer step (full training: gradients are the peak) the gradients are split too
    st = pl.Strategy("full", True, True, 1)
    one = pl.predict_memory(s, st, pl.Workload("sft", 128, 1), d)
    four = pl.predict_memory(s, st, pl.Workload("sft", 128, 1, gpus=4, shard="fsdp"), d)
    assert one["moment"] == four["moment"] == "optimizer step"
    assert four["components"]["gradients"] == one["components"]["gradients"] // 4


def test_ddp_keeps_a_full_copy_per_device_and_divides_the_steps():
    s = shape("llama-2-7b")
    d = pl.cuda_device(80 * GiB, name="80 GiB card", flops=4e14)
    st = pl.Strategy("lora", False, True, 1)
    one = pl.strategy_result(s, st, pl.Workload("dpo", 1024, 8, 8484), d)
    two = pl.strategy_result(s, st, pl.Workload("dpo", 1024, 8, 8484, gpus=2, shard="none"), d)
    assert two.components["policy_weights"] == one.components["policy_weights"]
    assert two.components["gradient_buckets"] == s.lora_params(16) * 4  # DDP's all-reduce buckets
    assert two.steps == one.steps  # --batch is the global batch: the same optimizer steps ...
    assert 0.45 < two.seconds_per_step / one.seconds_per_step < 0.6  # ... each half the micro-steps + all-reduce


def test_cli_plan_gpus_and_shard(tmp_path):
    cfg = str(ROOT / "tests" / "fixtures" / "configs" / "llama-2-7b.json")
    r = run_rounds("plan", "--model", cfg, "--stage", "dpo", "--gpu-mem", "24GiB", "--gpus", "4", "--shard", "zero3",
                   "--batch", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["gpus"] == 4 and out["shard"] == "zero3" and out["recommended"]
    assert all("gathered_layers" in x["components"] for x in out["strategies"])
    r = run_rounds("plan", "--model", cfg, "--stage", "dpo", "--device", "cpu", "--gpus", "2")
    assert r.returncode == 1 and "--gpus is for GPUs" in r.stderr


def test_plan_fit_recovers_the_costs_it_was_given(tmp_path):
    """bench/plan_fit.py, fed steps whose times and peaks the planner itself predicts, gives back
    the planner's own figures: the fitting tool that produced TIME and ACT does what it says."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import plan_fit

    shapes = {
        "a": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1500},
        "b": {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
              "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 4096},
        "c": {"model_type": "llama", "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 3,
              "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 32000},
    }
    cpu = plan_fit.CPU
    lines = []
    for name, cfg in shapes.items():
        sh = ModelShape.from_config(cfg)
        for stage, plan_, pre, gc, seq, batch in [
                ("sft", "full", False, True, 256, 2), ("sft", "lora", False, True, 256, 2),
                ("sft", "qlora", False, True, 512, 4), ("dpo", "full", False, True, 256, 2),
                ("dpo", "full", True, True, 128, 1), ("dpo", "lora", False, True, 512, 4),
                ("dpo", "lora", True, True, 256, 2), ("dpo", "qlora", True, True, 128, 1),
                ("dpo", "qlora", False, True, 256, 2), ("sft", "lora", False, False, 128, 1),
                ("dpo", "full", False, False, 128, 4), ("sft", "full", False, False, 2048, 4)]:
            s, w = pl.Strategy(plan_, pre, gc, batch), pl.Workload(stage=stage, max_length=seq)
            seconds = pl.predict_seconds(sh, s, w, cpu)
            point = {"shape": name, "stage": stage, "plan": plan_, "precompute_ref": pre,
                     "gradient_checkpointing": gc, "seq": seq, "batch": batch}
            lines.append(json.dumps({"point": point, "config": cfg, "probe": {"flops": cpu.flops},
                                     "step_times": [9.9, seconds, seconds],
                                     "measured": pl.predict_memory(sh, s, w, cpu)["peak_bytes"]}))
    raw = tmp_path / "steps.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    points = plan_fit.load(str(raw))
    x = plan_fit.fit_time(points)
    worst, _ = plan_fit.report_time(points, x, show=False)
    assert worst < 0.005
    # a different set of costs is not what these steps say
    assert plan_fit.report_time(points, x * 1.2, show=False)[0] > 0.15
    assert plan_fit.report_memory(points, plan_fit.fit_memory(points)) < 0.005
    # --cross: fitted on one run, checked on another; the planner's own coefficients are back after it
    before = (dict(pl.TIME["cpu"]), {k: dict(v) for k, v in pl.ACT.items()})
    assert plan_fit.cross(points, points)["time"] < 0.005
    later = plan_fit.load(str(raw))
    for r, ref in zip(later, points, strict=True):
        r["seconds"] = ref["seconds"] * 1.25  # the same steps, a quarter slower on the second run
    result = plan_fit.cross(points, later)
    assert result["time"] == pytest.approx(0.2, abs=0.005) and result["memory"] < 0.005
    assert plan_fit.cross(later, later)["time"] < 0.005  # the refit's own costs, not engine/plan.py's
    assert (dict(pl.TIME["cpu"]), {k: dict(v) for k, v in pl.ACT.items()}) == before


def test_a_point_measured_in_several_processes_is_timed_by_their_median(tmp_path):
    """bench/plan_accuracy.py --repeat N: a point's seconds per step is the median of the fresh
    processes' figures (a step's time differs from one process to the next; its live tensor bytes do
    not), every process's figure is kept in the raw line, and plan_fit reads the median back."""
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import plan_accuracy
        import plan_fit
    finally:
        sys.path.remove(str(ROOT / "bench"))
    runs = [{"measured": 100, "seconds_per_step": t, "step_times": [1.0, 1.0, 1.0, t, t]}
            for t in (0.3, 0.1, 0.2)]
    m = plan_accuracy.combine(runs)
    assert m["seconds_per_step"] == 0.2 and m["repeat_seconds"] == [0.3, 0.1, 0.2]
    assert m["repeat_measured"] == [100, 100, 100] and m["step_times"] == runs[0]["step_times"]
    assert plan_accuracy.spread(m).strip() == "100%"  # (0.3 - 0.1) / 0.2
    one = plan_accuracy.combine(runs[:1])
    assert one["seconds_per_step"] == 0.3 and "repeat_seconds" not in one and plan_accuracy.spread(one) == ""
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 1500}
    point = {"shape": "a", "stage": "sft", "plan": "lora", "seq": 128, "batch": 1}
    raw = tmp_path / "steps.jsonl"
    raw.write_text(json.dumps({"point": point, "config": cfg, "probe": {"flops": 1e11}, "tracked_steps": 3,
                               **m}) + "\n")
    assert plan_fit.load(str(raw))[0]["seconds"] == 0.2  # not the first process's own 0.3
    # two runs of the same points: their times compared point by point, their memory too
    later = tmp_path / "later.jsonl"
    point_b = {**point, "seq": 256}
    later.write_text("".join(json.dumps({"point": pt, "config": cfg, "probe": {"flops": 1e11}, "tracked_steps": 3,
                                         "measured": 100, "step_times": [1.0] * 3 + [t] * 3}) + "\n"
                             for pt, t in ((point, 0.3), (point_b, 0.5))))
    rep = plan_fit.repeatability(plan_fit.load(str(raw)), plan_fit.load(str(later)))
    assert rep["points"] == 1 and rep["median_ratio"] == pytest.approx(1.5)  # 0.3 against the median 0.2
    assert rep["apart_over_25"] == 1 and rep["memory_apart"] == 0.0
    # --check --median: only the points every run measured, each timed by its median over the runs
    third = tmp_path / "third.jsonl"
    third.write_text(later.read_text().replace("0.3", "0.4"))
    merged = plan_fit.median_of_runs([plan_fit.load(str(f)) for f in (raw, later, third)])
    assert [r["seconds"] for r in merged] == [0.3]  # the median of 0.2, 0.3 and 0.4; point_b is not in raw
    # --repeat takes a whole number of at least 1
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "plan_accuracy.py"), "--repeat", "0"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "--repeat" in r.stderr


def test_plan_times_read_at_a_glance():
    from engine.units import format_seconds

    assert [format_seconds(x) for x in (None, 1.64, 720, 5400, 1358.6 * 3600)] == \
        ["-", "1.6 s", "12 min", "1.5 h", "57 days"]


def test_a_visible_gpu_is_probed_once_and_cached(tmp_path, monkeypatch):
    """On a GPU box the plan uses the GPU's measured matmul throughput, probed once per GPU name;
    a probe that cannot run (torch without CUDA) is not remembered and the figure stays typical."""
    from engine.probe import SystemProbe

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(SystemProbe, "gpus", lambda self: [{"name": "Card X", "mem_total": 12 * GiB}])
    calls = []

    def probe():
        calls.append(1)
        return {"flops": 3.0e14, "bf16": True}

    monkeypatch.setattr(pl, "_probe_cuda", probe)
    d = pl.detect_device("auto")
    assert d.kind == "cuda" and d.flops == 3.0e14 and d.calibrated and d.budget_bytes == 12 * GiB
    assert pl.detect_device("auto").flops == 3.0e14 and len(calls) == 1  # cached
    assert "GPU throughput measured" in pl.time_uncertainty(d)
    monkeypatch.setattr(SystemProbe, "gpus", lambda self: [{"name": "Card Y", "mem_total": 8 * GiB}])
    monkeypatch.setattr(pl, "_probe_cuda", lambda: {"flops": 0.0, "bf16": True})
    d = pl.detect_device("auto")
    assert not d.calibrated and "the typical throughput of an 8 GB consumer card" in pl.time_uncertainty(d)
    assert "cuda:Card Y" not in json.loads((tmp_path / "rounds" / "device_probe.json").read_text())


def test_an_unknown_architecture_is_never_silently_recommended(tmp_path, tiny_model):
    """#20: an architecture the planner only estimates gets no recommendation (`rounds plan` exits 1
    and says why), `--assume-generic` takes the estimate, and `rounds train --plan auto` is refused
    before any session; an explicit --plan is the user's choice."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "mystery", "hidden_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "vocab_size": 100}))
    r = run_rounds("plan", "--model", str(cfg), "--stage", "sft", "--gpu-mem", "12GiB")
    assert r.returncode == 1
    assert "rounds does not know the 'mystery' architecture" in r.stdout and "--assume-generic" in r.stdout
    assert "warning: assumed intermediate_size 4 x hidden = 256 (the config has none)" in r.stdout
    r = run_rounds("plan", "--model", str(cfg), "--stage", "sft", "--gpu-mem", "12GiB", "--assume-generic")
    assert r.returncode == 0 and "recommended:" in r.stdout
    model = tmp_path / "m"
    import shutil

    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**meta, "model_type": "olmo"}))  # transformers knows it; we do not
    data = str(ROOT / "engine" / "demo_data" / "sft_train.jsonl")
    r = run_rounds("--sessions", str(tmp_path / "s"), "train", "sft", "--model", str(model), "--data", data)
    assert r.returncode == 1 and "does not know the 'olmo' architecture" in r.stderr
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


@pytest.mark.parametrize("verb,flag,value", [
    ("plan", "--max-length", "0"), ("plan", "--pairs", "-5"), ("plan", "--epochs", "-1"),
    ("plan", "--lora-rank", "-8"), ("plan", "--batch", "0"), ("plan", "--gpus", "0"), ("plan", "--epochs", "nan"),
    ("train", "--max-length", "0"), ("train", "--epochs", "-1"), ("train", "--lora-rank", "-8"),
    ("train", "--batch", "0"), ("train", "--grad-accum", "0"), ("train", "--lr", "-0.1"), ("train", "--max-steps", "0"),
    ("train", "--save-steps", "0"),
])
def test_every_number_flag_is_checked(tmp_path, verb, flag, value):
    """#20: `--max-length 0`, `--pairs -5`, `--epochs -1`, `--lora-rank -8` used to run."""
    args = ["plan", "--model", str(FIXTURES / "llama-2-7b.json"), "--stage", "dpo"] if verb == "plan" else \
        ["--sessions", str(tmp_path / "s"), "train", "sft", "--model", str(tmp_path), "--data", "x.jsonl"]
    r = run_rounds(*args, flag, value)
    assert r.returncode == 2 and f"argument {flag}" in r.stderr, r.stderr
    assert "must be" in r.stderr or "is not a" in r.stderr
    assert not (tmp_path / "s").exists()


def test_max_length_past_the_context_is_warned_and_long_totals_stay_readable():
    r = run_rounds("plan", "--model", str(FIXTURES / "llama-2-7b.json"), "--stage", "dpo", "--device", "cpu",
                   "--pairs", "8484", "--max-length", "8192")
    assert "warning: --max-length 8192 is more than the model's context (max_position_embeddings 4,096)" in r.stdout
    from engine.units import format_seconds

    assert format_seconds(1046 * 86400) == "2.9 years" and format_seconds(999 * 86400) == "999 days"
    header = next(line for line in r.stdout.splitlines() if "strategy" in line and "total" in line)
    gap = header.index("total") - 7  # the space between the s/step column and the 11-wide total column
    rows = [line for line in r.stdout.splitlines() if line[2:].startswith(("full", "lora", "qlora"))]
    assert rows and all(line[gap] == " " and line[gap - 1] != " " for line in rows), rows


def test_the_probe_is_taken_again_when_stale_and_says_when_it_was_taken(tmp_path, monkeypatch):
    """#20: the CPU probe was cached for good, so a figure from a busy or another machine was reused."""
    monkeypatch.setattr(pl, "_probe_cache", lambda: tmp_path / "probe.json")
    here = {"cpu_model": "X", "cores": 2, "host": "h", "load": 0.1}
    monkeypatch.setattr(pl, "machine", lambda: dict(here))
    calls = []

    def measure():
        calls.append(1)
        return {"flops": 1e11}

    # what else the machine ran during the probe is this test's choice, not the CI box's (a busy box
    # marked the probe as taken under load, hence stale, and it was measured twice)
    monkeypatch.setattr(pl, "others_busy", lambda m: (m(), 0.0))
    now = 1.8e9
    monkeypatch.setattr(pl.time, "time", lambda: now)
    pl._cached_probe("cpu:2", measure)
    pl._cached_probe("cpu:2", measure)
    assert len(calls) == 1  # cached
    base = {**here, "flops": 1e11, "time": now}
    assert pl.probe_is_stale(base, now, here) is None
    assert pl.probe_is_stale(base, now + 8 * 86400, here) == "older than 7 days"
    assert "another machine" in pl.probe_is_stale({**base, "cpu_model": "Y"}, now, here)
    assert "busy machine" in pl.probe_is_stale({**base, "load": 0.9}, now, here)
    assert pl.probe_is_stale({**base, "load": 0.9}, now, {**here, "load": 0.8}) is None  # still busy: keep it
    now += 8 * 86400
    pl._cached_probe("cpu:2", measure)
    assert len(calls) == 2  # a week later: taken again
    pl._cached_probe("cpu:2", measure, refresh=True)
    assert len(calls) == 3  # --refresh-probe
    # taken by an earlier version of the probe (before the 4-bit probe, or with glibc's heap): taken again
    marks = {"q4_probed": True, "heap": "training"}
    taken = base["time"]
    assert "earlier version" in pl.probe_is_stale(base, taken, here, expect=marks)
    assert "heap" in pl.probe_is_stale({**base, "q4_probed": True}, taken, here, expect=marks)
    assert pl.probe_is_stale({**base, **marks}, taken, here, expect=marks) is None
    pl._cached_probe("cpu:2", measure, expect=marks)
    assert len(calls) == 4  # the cached one lacked the markers
    d = pl.Device("cpu", 2**34, flops=1e11, calibrated=True, probe={**base, "time": now - 3 * 3600, "load": 0.9})
    text = pl.time_uncertainty(d, now)
    assert "probe taken 3.0 h ago at load 0.9 a core" in text and "busy machine" in text


def test_an_unprobed_gpu_is_taken_as_a_typical_card_and_labelled():
    d = pl.cuda_device(12 * GiB, name="GPU with 12GiB")
    assert d.typical == "a 12 GB consumer card" and not d.calibrated
    assert "typical throughput of a 12 GB consumer card (20 TFLOP/s)" in pl.time_uncertainty(d)
    assert pl.typical_gpu("NVIDIA H100 80GB HBM3", 80 * GiB)[0] == "H100"
    assert pl.typical_gpu("GPU", 24 * GiB)[1] > pl.typical_gpu("GPU", 8 * GiB)[1]


# --------------------------------------------------------------------------- padded batches on CUDA

def test_a_batch_is_padded_when_it_holds_sequences_of_different_lengths():
    dpo, sft = pl.Workload(stage="dpo", max_length=512), pl.Workload(stage="sft", max_length=512)
    assert dpo.padded(1) and sft.padded(2)  # lengths unknown: assume padding
    assert not sft.padded(1)  # one sequence: no mask
    assert not pl.Workload(stage="sft", max_length=512, lengths=[300, 300, 300]).padded(4)
    assert pl.Workload(stage="sft", max_length=512, lengths=[200, 300]).padded(4)
    # everything longer than --max-length is cut to it: all one length again
    assert not pl.Workload(stage="dpo", max_length=256, lengths=[300, 900]).padded(2)


def test_a_padded_batch_on_cuda_adds_the_attention_scores_and_repeated_keys_per_layer():
    s = shape("llama-3.2-1b")
    d, cpu = pl.cuda_device(12 * pl.GiB, "NVIDIA GeForce RTX 4070"), pl.Device("cpu", 64 * pl.GiB)
    strat = pl.Strategy("lora", precompute_ref=True, gradient_checkpointing=False, micro_batch=4)
    padded = pl.Workload(stage="dpo", max_length=512)
    even = pl.Workload(stage="dpo", max_length=512, lengths=[512] * 8)
    extra = (pl.predict_memory(s, strat, padded, d)["components"]["activations"]
             - pl.predict_memory(s, strat, even, d)["components"]["activations"])
    tokens = 4 * 2 * 512
    per_layer = tokens * (s.heads * 512 + 2 * s.heads * s.head_dim) * 2  # bf16; GQA: keys and values repeated
    assert extra == pytest.approx(per_layer * s.layers, rel=1e-6)
    # with checkpointing only the layer being recomputed keeps them
    gc = pl.Strategy("lora", precompute_ref=True, gradient_checkpointing=True, micro_batch=4)
    assert (pl.predict_memory(s, gc, padded, d)["components"]["activations"]
            - pl.predict_memory(s, gc, even, d)["components"]["activations"]) == pytest.approx(per_layer, rel=1e-6)
    # the CPU's fit already holds what its attention keeps
    on_cpu = [pl.predict_memory(s, strat, w, cpu)["peak_bytes"] for w in (padded, even)]
    assert on_cpu[0] == on_cpu[1]


def test_a_probe_taken_while_other_processes_were_busy_is_taken_again_once_it_is_quiet():
    here = {"cpu_model": "X", "cores": 2, "host": "h", "load": 0.1}
    taken = {**here, "time": 1000.0, "flops": 1e9}
    assert pl.probe_is_stale({**taken, "others_busy": 0.1}, now=2000.0, here=here) is None
    why = pl.probe_is_stale({**taken, "others_busy": 0.9}, now=2000.0, here=here)
    assert why and "other processes used 90%" in why
    # still busy now: the figure is as good as any, and the label says it was taken busy
    assert pl.probe_is_stale({**taken, "others_busy": 0.9}, now=2000.0, here={**here, "load": 0.9}) is None
    d = pl.Device("cpu", 2**30, flops=1e9, calibrated=True, probe={**taken, "others_busy": 0.9})
    assert "other processes using 90% of the CPU" in pl.time_uncertainty(d, now=2000.0)
    assert "taken on a busy machine" in pl.time_uncertainty(d, now=2000.0)


def test_the_probe_records_how_busy_the_rest_of_the_machine_was():
    import subprocess
    import sys

    burn = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<60: pass"])
    try:
        time.sleep(0.5)  # let it start burning
        _, busy = pl.others_busy(lambda: time.sleep(1.0))  # the probe itself idles: only the burner is busy
    finally:
        burn.kill()
        burn.wait()
    import os

    assert busy >= 0.5 / (os.cpu_count() or 1)  # one core of this machine's, at least half the time
    _, quiet = pl.others_busy(lambda: sum(range(3_000_000)))  # our own work is not counted
    assert quiet < busy


def test_a_cpu_whose_4bit_layers_are_slower_gets_slower_qlora_steps_and_the_same_lora_ones():
    s, w = shape("llama-2-7b"), pl.Workload(stage="dpo", max_length=512)
    ref = dict(pl.PROBE_REFERENCE)
    f = ref["flops"]
    here = pl.Device("cpu", 64 * pl.GiB, flops=f, calibrated=True, probe=ref)
    slow = pl.Device("cpu", 64 * pl.GiB, flops=f, calibrated=True,
                     probe={"flops": f, "q4_call": 3 * ref["q4_call"], "q4_element": 3 * ref["q4_element"]})
    qlora, lora = pl.Strategy("qlora"), pl.Strategy("lora")
    a, b = pl.time_terms(s, qlora, w, here), pl.time_terms(s, qlora, w, slow)
    assert b["q4_layer_pass"] == pytest.approx(3 * a["q4_layer_pass"])
    assert b["dequant_large"] == pytest.approx(3 * a["dequant_large"]) and a["dequant_large"] > 0
    assert b["dense"] == a["dense"]  # after dequantization the matmul is the probed fp32 one
    assert pl.predict_seconds(s, lora, w, slow) == pl.predict_seconds(s, lora, w, here)
    # no 4-bit probe (bitsandbytes could not run), the fit machine's matmul: the reference machine's costs
    bare = pl.Device("cpu", 64 * pl.GiB, flops=f, calibrated=True, probe={"flops": f})
    assert pl.predict_seconds(s, qlora, w, bare) == pytest.approx(
        sum(w_ * pl.TIME["cpu"][k] / (f if k in pl.FLOP_TERMS else 1)
            for k, w_ in pl.step_work(s, qlora, w).items() if k in pl.TIME["cpu"]))


def test_a_cpu_twice_as_fast_at_a_matmul_gets_half_the_per_call_seconds_and_its_4bit_costs_stay_probed(monkeypatch):
    """#20: TIME's terms in seconds (a layer's fixed per-call cost and the like) were the fit machine's;
    another CPU's are scaled by its matmul probe against the fit machine's, FLOP terms by the probe
    itself, and the 4-bit terms by their own probes only."""
    # every term given a cost, so each one's scaling is seen (a refit may set some to 0)
    monkeypatch.setitem(pl.TIME, "cpu", {k: v or 1e-9 for k, v in pl.TIME["cpu"].items()})
    s, w = shape("llama-3.2-1b"), pl.Workload(stage="sft", max_length=256)
    ref = dict(pl.PROBE_REFERENCE)
    fast_probe = {**ref, "flops": 2 * ref["flops"]}
    base = pl.Device("cpu", 64 * pl.GiB, flops=ref["flops"], calibrated=True, probe=ref)
    fast = pl.Device("cpu", 64 * pl.GiB, flops=2 * ref["flops"], calibrated=True, probe=fast_probe)
    for plan in ("lora", "qlora"):
        a, b = (pl.time_terms(s, pl.Strategy(plan), w, d) for d in (base, fast))
        for term in pl.SECONDS_TERMS:
            assert b[term] == pytest.approx(a[term] / 2), term
        for term in pl.FLOP_TERMS:
            assert b[term] == pytest.approx(a[term] / 2), term
        assert a["layer_pass"] > 0
        if plan == "qlora":
            for term in ("q4_layer_pass", "dequant", "dequant_large"):
                assert b[term] == pytest.approx(a[term]) and a[term] > 0, term


def test_the_4bit_probe_measures_this_cpu():
    q = pl.q4_probe()
    assert 0 < q["q4_call"] < 1 and 0 < q["q4_element"] < 1e-6


def test_the_layer_terms_follow_the_layers_own_widths_and_a_plain_mlp_counts_once():
    """#20: the recomputed layer's activations are in its own widths: h, the q/k/v projections
    (heads and kv heads x head_dim) and the MLP times its up projections (gated: 2, GPT-NeoX: 1)."""
    cpu = pl.Device("cpu", 2**40)
    base = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 8,
            "vocab_size": 1024, "max_position_embeddings": 2048}
    llama = ModelShape.from_config({**base, "model_type": "llama", "num_key_value_heads": 8})
    gqa = ModelShape.from_config({**base, "model_type": "llama", "num_key_value_heads": 2})
    neox = ModelShape.from_config({**base, "model_type": "gpt_neox"})
    assert not neox.gated and llama.gated
    w, s = pl.Workload(stage="sft", max_length=256), pl.Strategy("full", micro_batch=2)
    tokens, c = 512, pl.ACT["full"]

    # one up projection instead of gate + up: the MLP term once, not twice (weights differ too: compare the parts;
    # each part is rounded to whole bytes, hence abs=2)
    parts, moments = {}, {}
    for name, sh in (("llama", llama), ("gqa", gqa), ("neox", neox)):
        r = pl.predict_memory(sh, s, w, cpu)
        assert r["moment"] == "backward through a layer"
        parts[name], moments[name] = r["components"]["activations"], r["moments"]["backward through a layer"]
    assert parts["llama"] - parts["neox"] == pytest.approx(tokens * c["layer_mlp"] * 2048 * 4, abs=2)
    # fewer key/value heads: their projections' width, twice (k and v), in the attention term
    assert parts["llama"] - parts["gqa"] == pytest.approx(tokens * c["layer_attn"] * 2 * (512 - 128) * 4, abs=2)
    assert moments["llama"] > moments["gqa"]
    # without checkpointing every layer keeps all three parts
    ng = pl.Strategy("full", gradient_checkpointing=False, micro_batch=2)
    a = [pl.predict_memory(sh, ng, w, cpu)["components"]["activations"] for sh in (llama, neox)]
    assert a[0] - a[1] == pytest.approx(tokens * pl.ACT["full"]["nogc_mlp"] * 2048 * 4 * 4, abs=2)


def test_an_activation_written_out_in_torch_operations_and_the_models_own_dropout_are_counted():
    """#20: GPT-2's gelu_new keeps three more elements per MLP element for backward than a fused
    activation, and its own dropout (SFT keeps it, TRL's DPO turns it off) keeps three copies of the
    attention scores and one element of each of two outputs: counted, not fitted."""
    assert pl.activation_saved("silu") == 0 and pl.activation_saved("gelu") == 0
    assert pl.activation_saved("gelu_new") == pytest.approx(3.0)
    assert pl.activation_saved("no such activation") == 0.0
    import torch

    pl.activation_saved.cache_clear()
    with torch.no_grad():  # a caller planning under no_grad still gets (and caches) the real figure
        assert pl.activation_saved("gelu_new") == pytest.approx(3.0)
    # on CUDA the attention kernels take dropout themselves: no copies of the scores
    gpt2_cfg = read_config(FIXTURES / "gpt2.json")
    g, q = ModelShape.from_config(gpt2_cfg), ModelShape.from_config({**gpt2_cfg, "attn_pdrop": 0.0})
    gpu, w1 = pl.Device("cuda", 2**40, "bf16"), pl.Workload(stage="sft", max_length=256)
    assert (pl.predict_memory(g, pl.Strategy("lora"), w1, gpu)["components"]["activations"]
            == pl.predict_memory(q, pl.Strategy("lora"), w1, gpu)["components"]["activations"])
    falcon = ModelShape.from_config({**read_config(FIXTURES / "falcon-7b.json"), "attention_dropout": 0.1})
    assert (falcon.attn_dropout, falcon.hidden_dropout) == (0.0, 0.1)  # Falcon's is on the output
    gpt2 = shape("gpt2")
    assert (gpt2.activation, gpt2.attn_dropout, gpt2.hidden_dropout) == ("gelu_new", 0.1, 0.1)
    assert (shape("llama-3-8b").activation, shape("llama-3-8b").attn_dropout) == ("silu", 0.0)
    assert shape("gemma-2-2b").activation == "gelu_pytorch_tanh" and shape("pythia-1b").activation == "gelu"

    cfg = read_config(FIXTURES / "gpt2.json")
    quiet = ModelShape.from_config({**cfg, "attn_pdrop": 0.0, "resid_pdrop": 0.0})
    fused = ModelShape.from_config({**cfg, "activation_function": "gelu"})
    cpu, s = pl.Device("cpu", 2**40), pl.Strategy("lora", micro_batch=2)
    sft, dpo = pl.Workload(stage="sft", max_length=256), pl.Workload(stage="dpo", max_length=256)

    def layer_moment(sh, w, strat=s):
        return pl.predict_memory(sh, strat, w, cpu)["moments"]["backward through a layer"]

    tokens, h, heads = 512, gpt2.hidden, gpt2.heads
    assert layer_moment(gpt2, sft) - layer_moment(quiet, sft) == pytest.approx(
        tokens * (3 * heads * 256 + 2 * h) * 4, rel=1e-6)
    assert layer_moment(gpt2, dpo) == layer_moment(quiet, dpo)  # DPO: dropout off
    assert layer_moment(gpt2, dpo) - layer_moment(fused, dpo) == pytest.approx(
        2 * tokens * 3 * gpt2.intermediate * 4, rel=1e-6)  # chosen and rejected: twice the tokens
    # without checkpointing every layer keeps them
    ng = pl.Strategy("lora", gradient_checkpointing=False, micro_batch=2)
    a = [pl.predict_memory(sh, ng, sft, cpu)["components"]["activations"] for sh in (gpt2, quiet)]
    assert a[0] - a[1] == pytest.approx(gpt2.layers * tokens * (3 * heads * 256 + 2 * h) * 4, rel=1e-6)


@pytest.mark.parametrize("field,value,says", [
    ("attn_pdrop", "0.1", "not a dropout probability"), ("resid_pdrop", 1.5, "not a dropout probability"),
    ("attn_pdrop", True, "not a dropout probability"), ("activation_function", 3, "not the name of an activation"),
    ("activation_function", "", "not the name of an activation"),
])
def test_a_malformed_activation_or_dropout_field_is_refused_by_name(field, value, says):
    cfg = read_config(FIXTURES / "gpt2.json")
    with pytest.raises(UserError) as e:
        ModelShape.from_config({**cfg, field: value}, file="config.json")
    assert e.value.field == field and says in str(e.value)


def test_a_real_gpt2_sft_step_with_its_own_dropout_peaks_where_the_planner_says(tmp_path):
    """A real TRL SFT step of a GPT-2 built here (gelu_new, dropout 0.1), live tensor bytes measured as
    bench/plan_accuracy.py measures them: within the planner's 10 %, and not without the counted terms."""
    import subprocess
    import sys

    from engine.tinymodel import build_tiny_model

    bench = ROOT / "bench" / "plan_accuracy.py"
    model = build_tiny_model(tmp_path / "gpt2", size="tiny", overrides={
        "model_type": "gpt2", "hidden_size": 256, "n_inner": 1024, "num_hidden_layers": 2,
        "num_attention_heads": 4, "n_positions": 1024})
    cfg = json.loads((model / "config.json").read_text())
    assert "intermediate_size" not in cfg  # GPT-2 names its MLP width n_inner: no stray field
    built = json.loads((model / "rounds_tiny_model.json").read_text())["parameters"]
    gpt2 = ModelShape.from_config(cfg)
    assert gpt2.params_total == built and gpt2.activation == "gelu_new" and gpt2.attn_dropout == 0.1

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import plan_accuracy
    finally:
        sys.path.remove(str(ROOT / "bench"))
    point = {"shape": "gpt2", "stage": "sft", "plan": "lora", "seq": 512, "batch": 2}
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in plan_accuracy.make_rows(model, "sft", 512, 8)))
    r = subprocess.run([sys.executable, str(bench), "--one", json.dumps(point), "--model", str(model),
                        "--data", str(data), "--steps", "1"], capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, r.stdout + r.stderr
    measured = json.loads(line[7:])["measured"]
    s, w = pl.Strategy("lora", micro_batch=2), pl.Workload(stage="sft", max_length=512)
    predicted = pl.predict_memory(gpt2, s, w, pl.Device("cpu", 2**40))["peak_bytes"]
    assert abs(predicted - measured) / measured <= 0.10, (predicted, measured)
    bare = pl.predict_memory(ModelShape.from_config({**cfg, "attn_pdrop": 0.0, "resid_pdrop": 0.0,
                                                     "activation_function": "gelu"}), s, w,
                             pl.Device("cpu", 2**40))["peak_bytes"]
    assert (measured - bare) / measured > 0.15, (bare, measured)  # the counted terms are what closes the gap


def test_activation_kernels_are_counted_on_transformers_own_activations():
    """#20: an activation written out in torch operations runs extra kernels over the MLP's width;
    the fused ones run none beyond silu's, and an unknown name is counted as fused."""
    for fused in ("silu", "gelu", "gelu_pytorch_tanh", "relu"):
        assert pl.activation_kernels(fused) == (0, 0), fused
    fwd, bwd = pl.activation_kernels("gelu_new")
    assert fwd >= 5 and bwd >= 5
    assert pl.activation_kernels("no-such-activation") == (0, 0)


def test_large_tensor_terms_start_where_a_tensor_passes_the_threshold():
    """#20: the *_large time terms count only tensors over LARGE_TENSOR_BYTES (fp32): an MLP tensor of
    a micro-batch's tokens x the MLP's width, the logits of a tile; the attention-score term only where
    the stage keeps the model's own attention dropout on (SFT) and the model has some."""
    cfg = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 2,
           "num_attention_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096}
    llama = ModelShape.from_config(cfg)
    lora = pl.Strategy("lora", micro_batch=1)
    edge = pl.LARGE_TENSOR_BYTES // 4 // 2048  # tokens at which an MLP tensor reaches the threshold
    small = pl.step_work(llama, lora, pl.Workload(stage="sft", max_length=edge))
    big = pl.step_work(llama, lora, pl.Workload(stage="sft", max_length=2 * edge))
    assert small["elementwise_large"] == 0 and big["elementwise_large"] > 0
    # logits: 32000 x the tile's tokens passes 32 MiB at 263 tokens
    assert pl.step_work(llama, lora, pl.Workload(stage="sft", max_length=256))["per_logit_large"] == 0
    assert pl.step_work(llama, lora, pl.Workload(stage="sft", max_length=512))["per_logit_large"] > 0
    assert big["attention_scores"] == 0  # no dropout in this config
    gpt2 = ModelShape.from_config({"model_type": "gpt2", "n_embd": 256, "n_layer": 2, "n_head": 4,
                                   "vocab_size": 1024, "n_positions": 1024})
    assert gpt2.attn_dropout == 0.1
    sft = pl.step_work(gpt2, lora, pl.Workload(stage="sft", max_length=256))
    dpo = pl.step_work(gpt2, lora, pl.Workload(stage="dpo", max_length=256))
    # SFT: forward, recomputation, backward; batch 1 x 4 heads x 256^2 scores x 2 layers each
    assert sft["attention_scores"] == 3 * 4 * 256 * 256 * 2 and dpo["attention_scores"] == 0
    fwd, bwd = pl.activation_kernels("gelu_new")
    assert sft["activation_kernels"] == 256 * 1024 * 2 * (fwd * 2 + bwd)
