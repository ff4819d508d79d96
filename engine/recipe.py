"""The one place that turns a ``TrainSpec`` into TRL/PEFT/bitsandbytes objects.

Read top to bottom: resolve the device, check the model folder, load the tokenizer and
model for the method (``engine.methods``), build the datasets, make the trainer config,
make the trainer. What differs between SFT, DPO, KTO ... is the stage's (``engine.stages``):
its dataset rows, its TRL config and its trainer; everything else here is shared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import methods, stages
from engine.data import load
from engine.errors import UserError
from engine.session.layout import ADAPTER, MERGED, MODEL

LEGACY_OPTIONS = ("beta", "sft_weight")  # stage options that were TrainSpec fields before stages had options


@dataclass
class TrainSpec:
    """Everything a training run needs; stored as ``config`` in session.json (so resume
    and a detached worker rebuild the same run from it)."""

    stage: str  # a registered stage: engine.stages.names()
    model: str
    data: str
    val: str | None = None
    adapter: str | None = None
    plan: str = "auto"  # auto (the planner chooses, engine.run.launch.resolve_plan) or a method: full, lora, qlora
    epochs: float = 1.0
    max_steps: int = -1
    lr: float | None = None
    batch: int = 1
    grad_accum: int = 1
    max_length: int = 512
    device: str = "auto"
    precompute_ref: bool = False  # stages with a reference: its log-probs computed once, before training
    options: dict[str, Any] = field(default_factory=dict)  # the stage's own settings (its `options`)
    stage_origin: dict[str, str] = field(default_factory=dict)  # module/file of a stage outside engine.stages
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
    assume_generic: bool = False  # --plan auto for an architecture the planner only estimates
    report_to: list[str] = field(default_factory=list)  # trackers beside the session folder (the trainer's own)

    @property
    def stage_impl(self) -> stages.Stage:
        return stages.get(self.stage, self.stage_origin)

    @property
    def method(self) -> methods.Method:
        if self.plan == "auto":
            raise ValueError("the plan is still 'auto': resolve it first (engine.run.launch.resolve_plan)")
        return methods.get(self.plan)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.stage_impl.default_lr[self.method.name]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainSpec:
        known = {f for f in cls.__dataclass_fields__}
        data = dict(data)
        legacy = {k: data.pop(k) for k in LEGACY_OPTIONS if k in data}  # a session written before stage options
        spec = cls(**{k: v for k, v in data.items() if k in known})
        for k, v in legacy.items():
            spec.options.setdefault(k, v)
        return spec


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"not valid JSON ({str(e)[:200]})", file=str(cfg_file), hint="the file is damaged") from None
    if not isinstance(config, dict):
        raise UserError(f"a JSON {type(config).__name__}, not an object", file=str(cfg_file),
                        hint="a model's config.json is one JSON object; the file is damaged or not a config")
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
    if not config.get("auto_map"):
        _check_model_type(config, cfg_file)
    for weights in sorted(p.glob("*.safetensors")):
        check_safetensors(weights)
    return config


def _check_model_type(config: dict, cfg_file: Path) -> None:
    """A ``model_type`` this transformers does not know fails only after a session was made: say it now."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UserError("no 'model_type' (text) in config.json", file=str(cfg_file), field="model_type",
                        hint="a Hugging Face model's config.json names its architecture, e.g. \"llama\"")
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    if model_type not in CONFIG_MAPPING_NAMES:
        raise UserError(f"model_type {model_type!r} is not an architecture transformers {transformers.__version__} "
                        "knows", file=str(cfg_file), field="model_type",
                        hint="check config.json; a newer transformers may know it (pip install -U transformers)")


def check_safetensors(path: Path) -> None:
    """Read a safetensors file's header (its first bytes, no weights) and check that the file holds
    every byte the header describes: a copy cut short, or a file that is not safetensors, is refused
    before any session is made."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size or n > 100 * 2**20:
                raise ValueError("not a safetensors file (no header where one should be)")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a safetensors file (its header is not a JSON object)")
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in ends):
            raise ValueError("not a safetensors file (a tensor's data_offsets are not byte positions)")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, RecursionError) as e:
        raise UserError(f"{path.name}: {str(e)[:200] if isinstance(e, ValueError) else 'a damaged header'}",
                        file=str(path), hint="copy the weights again; the file is damaged") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise UserError(f"{path.name} is cut short: {size:,} bytes, its header describes {need:,}", file=str(path),
                        hint="the copy or download stopped before the end; copy the weights again")


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
    return load(path, spec.stage_impl.data_kind, spec.columns)


# --------------------------------------------------------------------------- torch side

@dataclass
class Runtime:
    device: str  # "cpu" or "cuda"
    bf16: bool
    optimizer: str
    notes: list[str]
    allocator: str = "system"  # the CPU process's C heap: engine.heap's "reuse", or glibc's defaults


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
    from engine import heap

    # a CPU step's large tensors reuse freed heap memory instead of fresh mappings
    allocator = heap.keep_freed_memory() if device == "cpu" else heap.SYSTEM
    return Runtime(device, bf16, optimizer, notes, allocator)


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
    """The model to train (and, for a full plan from an adapter in a stage with a reference, its own
    reference copy)."""
    from peft import PeftModel

    quantize = spec.method.quantize
    model = _load_base(spec, rt, quantize)
    ref_model = None
    if spec.adapter:
        if not spec.method.adapters:
            model = PeftModel.from_pretrained(model, spec.adapter).merge_and_unload()
            if spec.stage_impl.factors.reference and not spec.precompute_ref:
                ref_model = PeftModel.from_pretrained(_load_base(spec, rt, False), spec.adapter).merge_and_unload()
        else:
            if quantize:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=spec.gradient_checkpointing)
            model = PeftModel.from_pretrained(model, spec.adapter, is_trainable=True)
    return model, ref_model


def lora_config(spec: TrainSpec):
    if not spec.method.adapters or spec.adapter:
        return None  # full training, or continuing an adapter the model already carries
    from peft import LoraConfig

    return LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def build_dataset(spec: TrainSpec, rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(spec.stage_impl.dataset_rows(spec, rows))


def trainer_config(spec: TrainSpec, rt: Runtime, output_dir: Path, has_eval: bool):
    """The settings every stage shares; the stage turns them into its TRL config."""
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
        report_to=list(spec.report_to) or "none",  # trackers alongside; the session folder is the record
        disable_tqdm=True,
        seed=spec.seed,
        data_seed=spec.seed,
        dataloader_num_workers=0,
    )
    return spec.stage_impl.trainer_config(spec, common)


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
    trainer = spec.stage_impl.make_trainer(spec, kwargs, ref_model)
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
        out = session / ADAPTER
        trainer.save_model(str(out))
        outputs[ADAPTER] = str(out)
        if lead:
            tokenizer.save_pretrained(out)
        if spec.merge and lead:
            base = _load_base(spec, rt, quantize=False)
            merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
            mout = session / MERGED
            merged.save_pretrained(mout)
            tokenizer.save_pretrained(mout)
            outputs[MERGED] = str(mout)
    else:
        out = session / MODEL
        trainer.save_model(str(out))
        if lead:
            tokenizer.save_pretrained(out)
        outputs[MODEL] = str(out)
        if spec.merge:
            outputs[MERGED] = str(out)  # a full run's model is already whole
    return outputs
