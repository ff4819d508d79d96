"""A model's shape and exact parameter count from its ``config.json`` alone (no torch).

Dense decoder-only families are counted exactly, bias by bias and norm by norm: Llama
2/3, Mistral, Qwen2/2.5, Phi-3 and Gemma/Gemma 2 (tests check the counts against the
published totals and against the model instantiated on the meta device). Any other
``model_type`` with the usual fields gets the same formula, labelled a generic estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

SUPPORTED = ("llama", "mistral", "qwen2", "phi3", "gemma", "gemma2")

_ALIASES = {  # other spellings of the same fields
    "hidden_size": ("n_embd", "d_model"),
    "num_hidden_layers": ("n_layer", "num_layers"),
    "num_attention_heads": ("n_head",),
    "intermediate_size": ("ffn_dim", "n_inner"),
}


def _get(cfg: dict, key: str, default=None):
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    for alt in _ALIASES.get(key, ()):
        if cfg.get(alt) is not None:
            return cfg[alt]
    return default


MAX_DIM = 2**20  # a width, head count or head size past this is a damaged config, not a model
MAX_LAYERS = 10_000
MAX_VOCAB = 2**27


def _dim(cfg: dict, key: str, file: str | None, default: int | None = None, limit: int = MAX_DIM) -> int:
    """A positive whole number from the config (a JSON float like 4096.0 is taken)."""
    v = _get(cfg, key)
    if v is None and default is not None:
        return default
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or v.is_integer())
    if not ok or not 0 < v <= limit:
        raise UserError(f"{key} is {json.dumps(v)[:40]}: not a whole number from 1 to {limit:,}", file=file,
                        field=key, hint="check the model's config.json (a copy may be damaged)")
    return int(v)


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    supported: bool
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    norms_per_layer: int
    params_total: int
    params_linear: int  # the decoder's linear layers (what LoRA targets and 4-bit quantizes)
    params_embed: int
    params_lm_head: int  # 0 when tied to the embeddings
    params_other: int  # norms and biases

    @property
    def q_out(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_out(self) -> int:
        return self.kv_heads * self.head_dim

    def lora_params(self, rank: int) -> int:
        """Adapter parameters for LoRA on every linear layer of the decoder (PEFT's all-linear)."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_out, self.kv_out
        per_layer = rank * ((h + q) + (h + kv) * 2 + (q + h) + (h + i) * 2 + (i + h))
        return per_layer * self.layers

    def linear_dims(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer in one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_out, self.kv_out
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def describe(self) -> str:
        label = self.model_type if self.supported else f"{self.model_type} (generic estimate)"
        n = self.params_total
        count = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"
        return f"{label}, {count} parameters"

    @classmethod
    def from_config(cls, cfg: dict, file: str | None = None) -> ModelShape:
        """``file`` names the config.json in errors (a field of the wrong type or size is refused,
        with its name, before any arithmetic)."""
        model_type = cfg.get("model_type", "?")
        model_type = model_type if isinstance(model_type, str) else "?"
        text = cfg.get("text_config")
        if isinstance(text, dict) and "hidden_size" not in cfg:
            sub = text.get("model_type", model_type)
            cfg = {**text, "model_type": sub if isinstance(sub, str) else model_type}
            model_type = cfg["model_type"]
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
                   if _get(cfg, k) is None]
        if missing:
            raise UserError(f"config has no {', '.join(missing)}", file=file, field=missing[0],
                            hint="is this a causal language model's config.json?")
        h = _dim(cfg, "hidden_size", file)
        layers = _dim(cfg, "num_hidden_layers", file, limit=MAX_LAYERS)
        heads = _dim(cfg, "num_attention_heads", file)
        kv = _dim(cfg, "num_key_value_heads", file, default=heads)
        if kv > heads:
            raise UserError(f"num_key_value_heads {kv} is more than num_attention_heads {heads}", file=file,
                            field="num_key_value_heads", hint="check the model's config.json")
        head_dim = _dim(cfg, "head_dim", file, default=max(1, h // heads))
        inter = _dim(cfg, "intermediate_size", file, default=4 * h)
        vocab = _dim(cfg, "vocab_size", file, limit=MAX_VOCAB)
        for flag in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            if cfg.get(flag) is not None and not isinstance(cfg[flag], bool):
                raise UserError(f"{flag} is {cfg[flag]!r}, not true or false", file=file, field=flag,
                                hint="JSON booleans are written true / false, without quotes")
        tied = bool(cfg.get("tie_word_embeddings", model_type in ("gemma", "gemma2")))
        qkv_bias = model_type == "qwen2" or bool(cfg.get("attention_bias", False))
        o_bias = bool(cfg.get("attention_bias", False)) and model_type != "qwen2"
        mlp_bias = bool(cfg.get("mlp_bias", False))
        norms = 4 if model_type == "gemma2" else 2
        q_out, kv_out = heads * head_dim, kv * head_dim
        linear = (h * q_out + 2 * h * kv_out + q_out * h + 3 * h * inter) * layers
        biases = ((q_out + 2 * kv_out) * qkv_bias + h * o_bias + (2 * inter + h) * mlp_bias) * layers
        other = biases + norms * h * layers + h  # per-layer norms and the final norm
        embed = vocab * h
        lm_head = 0 if tied else vocab * h
        return cls(model_type=model_type, supported=model_type in SUPPORTED, hidden=h, layers=layers, heads=heads,
                   kv_heads=kv, head_dim=head_dim, intermediate=inter, vocab=vocab, tied=tied, qkv_bias=qkv_bias,
                   norms_per_layer=norms, params_total=linear + other + embed + lm_head, params_linear=linear,
                   params_embed=embed, params_lm_head=lm_head, params_other=other)


def read_shape(path: str | Path) -> ModelShape:
    """The shape of the model whose folder or config.json is ``path``; errors name the file and field."""
    p = Path(path)
    return ModelShape.from_config(read_config(p), file=str(p / "config.json" if p.is_dir() else p))


def read_config(path: str | Path) -> dict:
    """``path`` is a model folder or a config.json; errors say which and what to do."""
    p = Path(path)
    file = p / "config.json" if p.is_dir() else p
    if not file.exists():
        raise UserError(f"{path}: no config.json" if p.is_dir() else f"{path}: no such file", field="--model",
                        hint="give a model folder or its config.json (only the config is read)")
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"not valid JSON ({str(e)[:200]})", file=str(file)) from None
    if not isinstance(cfg, dict):
        raise UserError("not a JSON object", file=str(file))
    return cfg
