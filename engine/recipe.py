"""The one place that turns a ``TrainSpec`` into TRL/PEFT/bitsandbytes objects.

Read top to bottom: resolve the device, check the model folder, load the tokenizer and
model for the plan, build the datasets, make the trainer config, make the trainer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.data import load, prompt_text
from engine.errors import UserError

PLANS = ("full", "lora", "qlora")
DEFAULT_LR = {("sft", "full"): 2e-5, ("sft", "lora"): 2e-4, ("sft", "qlora"): 2e-4,
              ("dpo", "full"): 5e-7, ("dpo", "lora"): 5e-6, ("dpo", "qlora"): 5e-6}


@dataclass
class TrainSpec:
    """Everything a training run needs; stored as ``config`` in session.json (so resume
    and a detached worker rebuild the same run from it)."""

    stage: str  # "sft" or "dpo"
    model: str
    data: str
    val: str | None = None
    adapter: str | None = None
    plan: str = "lora"
    epochs: float = 1.0
    max_steps: int = -1
    lr: float | None = None
    batch: int = 1
    grad_accum: int = 1
    max_length: int = 512
    device: str = "auto"
    precompute_ref: bool = False
    beta: float = 0.1
    sft_weight: float = 0.0  # DPO: add this much NLL on the chosen answers (RPO), against likelihood displacement
    gradient_checkpointing: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    save_steps: int = 100
    save_minutes: float = 30.0
    keep_checkpoints: int = 3
    logging_steps: int = 1
    eval_steps: int | None = None
    merge: bool = False
    seed: int = 42
    trust_remote_code: bool = False
    system_interval: float = 2.0
    columns: dict[str, str] = field(default_factory=dict)
    launcher: str = "python"  # or "accelerate": `accelerate launch` with num_processes ranks
    num_processes: int = 1
    accelerate_config: str | None = None

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[(self.stage, self.plan)]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- checks (no torch)

def check_model_folder(path: str, trust_remote_code: bool = False, what: str = "--model") -> dict:
    """Refuse a model folder we cannot load safely, before any session runs."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{path}: not a folder", field=what,
                        hint="give a local model folder (config.json, *.safetensors, tokenizer); nothing is downloaded")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: no config.json", field=what, hint="is this a Hugging Face model folder?")
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON ({e})", file=str(cfg_file), hint="the file is damaged") from None
    if not any(p.glob("*.safetensors")):
        bins = [f.name for f in p.glob("*.bin")]
        raise UserError(
            f"{path}: no *.safetensors weights" + (f" (found {', '.join(bins)})" if bins else ""), field=what,
            hint="rounds loads safetensors only (pickled .bin files can run code); convert with "
                 "`AutoModelForCausalLM.from_pretrained(...).save_pretrained(OUT)`")
    if not ((p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()):
        raise UserError(f"{path}: no tokenizer files", field=what, hint="save the tokenizer into the model folder")
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(f"{path}: the model needs its own code (auto_map in config.json)", field=what,
                        hint="read that code, then pass --trust-remote-code if you trust it")
    return config


def check_adapter_folder(path: str) -> dict:
    p = Path(path)
    cfg = p / "adapter_config.json"
    if not cfg.is_file():
        raise UserError(f"{path}: no adapter_config.json", field="--adapter",
                        hint="give the adapter folder a LoRA run wrote (SESSION/adapter)")
    if not (p / "adapter_model.safetensors").is_file():
        raise UserError(f"{path}: no adapter_model.safetensors", field="--adapter")
    try:
        return json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON ({e})", file=str(cfg)) from None


def load_rows(spec: TrainSpec, which: str = "data") -> list[dict]:
    path = getattr(spec, which)
    return load(path, spec.stage, spec.columns)


# --------------------------------------------------------------------------- torch side

@dataclass
class Runtime:
    device: str  # "cpu" or "cuda"
    bf16: bool
    optimizer: str
    notes: list[str]


def resolve_runtime(spec: TrainSpec) -> Runtime:
    import torch

    notes = []
    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU", field="--device",
                        hint="check `nvidia-smi` and that torch is a CUDA build, or use --device cpu")
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    if device == "cuda" and not bf16:
        notes.append("this GPU has no bf16: training in fp32")
    if device == "cuda":
        optimizer = "paged_adamw_8bit"
    else:
        optimizer = "adamw_torch"
        notes.append("paged 8-bit AdamW needs CUDA: using AdamW with fp32 states on CPU")
    return Runtime(device, bf16, optimizer, notes)


def _dtype(rt: Runtime):
    import torch

    return torch.bfloat16 if rt.bf16 else torch.float32


def load_tokenizer(spec: TrainSpec):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.model, local_files_only=True, trust_remote_code=spec.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_base(spec: TrainSpec, rt: Runtime, quantize: bool):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = dict(dtype=_dtype(rt), local_files_only=True, use_safetensors=True,
                                  trust_remote_code=spec.trust_remote_code)
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if rt.bf16 else torch.float32)
    if rt.device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.model, **kwargs)
    except Exception as e:  # a damaged folder raises anything from OSError to SafetensorError
        if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
            raise
        raise UserError(f"cannot load the model from {spec.model}: {e}", field="--model",
                        hint="check that the folder is complete and not damaged") from None
    if quantize and rt.device == "cpu":
        keep_4bit_trainable(model)
    return model


def keep_4bit_trainable(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during training.

    On a CPU with AVX512-BF16, the first eval-mode forward of a ``Linear4bit`` (DPO's
    precomputed reference log-probs, an evaluation pass) converts its weight to a packed
    inference layout for good; later training forwards then go through a kernel that has no
    autograd formula, so no gradient flows through the frozen 4-bit layers to the adapters
    before them — silently wrong training (bitsandbytes 0.50 warns only at backward). Turning
    the conversion off keeps the dequantize-and-matmul path, whose gradients are correct.
    Returns how many layers were changed."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_policy(spec: TrainSpec, rt: Runtime):
    """The model to train (and, for full DPO from an adapter, its own reference copy)."""
    from peft import PeftModel

    quantize = spec.plan == "qlora"
    model = _load_base(spec, rt, quantize)
    ref_model = None
    if spec.adapter:
        if spec.plan == "full":
            model = PeftModel.from_pretrained(model, spec.adapter).merge_and_unload()
            if spec.stage == "dpo" and not spec.precompute_ref:
                ref_model = PeftModel.from_pretrained(_load_base(spec, rt, False), spec.adapter).merge_and_unload()
        else:
            if quantize:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=spec.gradient_checkpointing)
            model = PeftModel.from_pretrained(model, spec.adapter, is_trainable=True)
    return model, ref_model


def lora_config(spec: TrainSpec):
    if spec.plan == "full" or spec.adapter:
        return None  # full training, or continuing an adapter the model already carries
    from peft import LoraConfig

    return LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def _messages(value: Any, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def build_dataset(spec: TrainSpec, rows: list[dict]):
    from datasets import Dataset

    if spec.stage == "sft":
        items = [{"prompt": [{"role": "user", "content": prompt_text(r)}],
                  "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows]
    else:
        items = [{"prompt": _messages(r["prompt"], "user"), "chosen": _messages(r["chosen"], "assistant"),
                  "rejected": _messages(r["rejected"], "assistant")} for r in rows]
    return Dataset.from_list(items)


def trainer_config(spec: TrainSpec, rt: Runtime, output_dir: Path, has_eval: bool):
    common = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=spec.batch,
        per_device_eval_batch_size=spec.batch,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps if spec.max_steps and spec.max_steps > 0 else -1,
        max_length=spec.max_length,
        gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if spec.gradient_checkpointing else None,
        optim=rt.optimizer,
        bf16=rt.bf16,
        use_cpu=rt.device == "cpu",
        logging_steps=spec.logging_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.keep_checkpoints,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(spec.eval_steps or spec.save_steps) if has_eval else None,
        report_to="none",
        disable_tqdm=True,
        seed=spec.seed,
        data_seed=spec.seed,
        dataloader_num_workers=0,
    )
    if spec.stage == "sft":
        from trl import SFTConfig

        return SFTConfig(**common, completion_only_loss=True)
    from trl import DPOConfig

    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, spec.sft_weight]} if spec.sft_weight else {}
    return DPOConfig(**common, beta=spec.beta, precompute_ref_log_probs=spec.precompute_ref, **losses)


def right_size_logprob_tiles(vocab_size: int) -> int | None:
    """TRL's fused LM head scores tokens in [4096, 32768] tiles, a buffer of up to 512 MiB in
    fp32 whatever the vocabulary. For a vocabulary narrower than a tile, a tile as wide as
    the vocabulary computes the same log-probs with a fraction of the memory. Returns the
    width set, or None where this TRL has no such setting."""
    from trl.trainer import utils as trl_utils

    if not hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):
        return None
    width = min(32768, -(-vocab_size // 64) * 64)
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = width
    return width


def build_trainer(spec: TrainSpec, rt: Runtime, output_dir: Path, callbacks: list, tokenizer=None,
                  rows: tuple[list[dict], list[dict] | None] | None = None):
    """``rows`` (train, val) already read and validated, so a rebuild after OOM does not read them again."""
    tokenizer = tokenizer or load_tokenizer(spec)
    model, ref_model = load_policy(spec, rt)
    right_size_logprob_tiles(model.config.get_text_config().vocab_size)
    train_rows, val_rows = rows or (load_rows(spec, "data"), load_rows(spec, "val") if spec.val else None)
    train = build_dataset(spec, train_rows)
    val = build_dataset(spec, val_rows) if val_rows else None
    args = trainer_config(spec, rt, output_dir, has_eval=val is not None)
    kwargs = dict(model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer,
                  callbacks=callbacks, peft_config=lora_config(spec))
    if spec.stage == "sft":
        from trl import SFTTrainer

        trainer = SFTTrainer(**kwargs)
    else:
        from trl import DPOTrainer

        trainer = DPOTrainer(ref_model=ref_model, **kwargs)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our telemetry prints its own line per step
    return trainer


def save_outputs(trainer, spec: TrainSpec, rt: Runtime, session: Path, tokenizer, lead: bool = True) -> dict[str, str]:
    """The adapter (LoRA plans) or the whole model (full), and with ``merge`` a merged model.

    Called on every rank of a multi-process run: ``trainer.save_model`` gathers a sharded
    (FSDP) model from all ranks and writes on the main process only; the rest is rank 0's."""
    from peft import PeftModel

    outputs: dict[str, str] = {}
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel):
        if "ref" in model.peft_config:  # TRL's frozen copy of the starting adapter: not an output
            model.delete_adapter("ref")
        out = session / "adapter"
        trainer.save_model(str(out))
        outputs["adapter"] = str(out)
        if lead:
            tokenizer.save_pretrained(out)
        if spec.merge and lead:
            base = _load_base(spec, rt, quantize=False)
            merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
            mout = session / "merged"
            merged.save_pretrained(mout)
            tokenizer.save_pretrained(mout)
            outputs["merged"] = str(mout)
    else:
        out = session / "model"
        trainer.save_model(str(out))
        if lead:
            tokenizer.save_pretrained(out)
        outputs["model"] = str(out)
        if spec.merge:
            outputs["merged"] = str(out)  # a full run's model is already whole
    return outputs
