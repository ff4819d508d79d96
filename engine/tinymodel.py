"""Build a tiny but real Hugging Face causal-LM folder, with no network.

The folder holds a Llama-architecture ``config.json``, ``model.safetensors``, a
``generation_config.json`` and a byte-level BPE tokenizer trained here with
``tokenizers`` on the bundled demo text, with bos/eos/pad tokens and a chat template
that marks assistant turns (``{% generation %}``) so trainers can mask the prompt.

``tiny`` (about 2 M parameters) is for tests; ``small`` (about 28 M) for the demo.
The same size and seed always give the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"

BOS, EOS, PAD = "<s>", "<|end|>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]

# A ChatML-like template. The prompt rendered with add_generation_prompt is a prefix
# of the full conversation, which TRL's prompt-completion handling relies on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


SIZES = {
    "tiny": TinySize(1024, 192, 512, 4, 4, 2, 512),
    "small": TinySize(4096, 512, 1408, 8, 8, 4, 1024),
}


def demo_corpus() -> list[str]:
    """Every question and answer of the bundled demo data, one string each."""
    texts: list[str] = []
    for path in sorted(DEMO_DATA.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts.extend(str(row[k]) for k in ("question", "answer", "reference", "prompt", "chosen", "rejected")
                             if k in row)
    return texts


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on the demo corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(demo_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        padding_side="right",
        model_max_length=SIZES["small"].max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out: str | os.PathLike, size: str = "tiny", seed: int = 0, force: bool = False,
                     overrides: dict | None = None) -> Path:
    """Write the model folder to ``out``; built in a temporary folder and renamed into place,
    so an interrupted build never leaves a half-written model behind.

    ``overrides`` changes config fields (``hidden_size``, ``num_hidden_layers``, ``vocab_size`` >=
    the tokenizer's, ...; ``model_type`` another architecture than Llama): the planner's accuracy
    benchmark builds models of other shapes this way, with the same tokenizer."""
    if size not in SIZES:
        raise UserError(f"unknown size {size!r}", hint=f"choose one of: {', '.join(SIZES)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: folder exists and is not empty",
                        hint="choose another OUT or pass --force to replace it")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    spec = SIZES[size]
    tokenizer = train_tokenizer(spec.vocab_size)
    overrides = overrides or {}
    # another architecture than Llama (the planner's benchmark builds a GPT-NeoX, whose MLP is not gated)
    model_type = overrides.get("model_type", "llama")
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    if model_type == "llama":
        fields["num_key_value_heads"] = spec.num_key_value_heads
    try:
        known = AutoConfig.for_model(model_type)
        # only the fields this architecture has (GPT-2 names its MLP width n_inner: an intermediate_size
        # left on its config would be a stray field that a reader of the config could take for the width)
        config = AutoConfig.for_model(model_type, **{k: v for k, v in fields.items() if hasattr(known, k)})
    except ValueError as e:
        raise UserError(f"model_type {model_type!r}: {e}") from None
    for key, value in overrides.items():
        if key == "model_type":
            continue
        if key == "vocab_size" and value < len(tokenizer):
            raise UserError(f"vocab_size {value} is smaller than the tokenizer's {len(tokenizer)}")
        setattr(config, key, value)
    # Seed both the global generator (used by transformers' init) and a fork, so
    # building does not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        do_sample=False,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "rounds_tiny_model.json").write_text(
            json.dumps({"size": size, "seed": seed, "parameters": model.num_parameters(),
                        "overrides": overrides}, indent=1) + "\n"
        )
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
