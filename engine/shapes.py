"""A model's shape and exact parameter count from its ``config.json`` alone (no torch).

Dense decoder-only families are counted exactly, bias by bias and norm by norm: Llama
2/3, Mistral, Qwen2/2.5, Phi-3 and Gemma/Gemma 2 (tests check the counts against the
published totals and against the model instantiated on the meta device). Any other
``model_type`` with the usual fields gets the same formula, labelled a generic estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import UserError

# Families counted exactly, weight by weight (tests check each against the model transformers builds on
# the meta device): what differs between them is data, below.
GATED = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text",
         "olmo2")  # gate/up/down MLP, RMS norms
MOE = ("mixtral", "qwen2_moe")  # gated experts (fused tensors in transformers 5) and a router
PLAIN = ("gpt_neox", "gpt2", "falcon")  # up/down MLP, layer norms with biases
SUPPORTED = GATED + MOE + PLAIN
TEXT_FAMILY = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2"}  # vision-language configs with the text fields at the top

# the MLP's activation and the model's own dropout: fields of each spelling, and each family's default
# (transformers' config defaults; a config.json written by transformers carries them anyway)
ACTIVATION_KEYS = ("hidden_activation", "hidden_act", "activation_function", "activation")  # Gemma 2/3: the first
ATTN_DROPOUT_KEYS = ("attn_pdrop", "attention_dropout")
HIDDEN_DROPOUT_KEYS = ("resid_pdrop", "hidden_dropout")
FAMILY_ACTIVATION = {"gpt2": "gelu_new", "gpt_neox": "gelu", "falcon": "gelu", "gemma": "gelu_pytorch_tanh",
                     "gemma2": "gelu_pytorch_tanh", "gemma3_text": "gelu_pytorch_tanh"}
FAMILY_DROPOUT = {"gpt2": 0.1}

_ALIASES = {  # other spellings of the same fields
    "hidden_size": ("n_embd", "d_model"),
    "num_hidden_layers": ("n_layer", "num_layers"),
    "num_attention_heads": ("n_head",),
    "intermediate_size": ("ffn_dim", "n_inner", "ffn_hidden_size"),
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


def _first(cfg: dict, keys: tuple[str, ...]):
    """(the first of ``keys`` the config sets, its value), or (None, None)."""
    return next(((k, cfg[k]) for k in keys if cfg.get(k) is not None), (None, None))


def _probability(cfg: dict, keys: tuple[str, ...], file: str | None, default: float) -> float:
    key, v = _first(cfg, keys)
    if key is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise UserError(f"{key} is {json.dumps(v)[:40]}: not a dropout probability from 0 to below 1", file=file,
                        field=key, hint="check the model's config.json (a copy may be damaged)")
    return float(v)


def _activation(cfg: dict, model_type: str, file: str | None) -> str:
    key, v = _first(cfg, ACTIVATION_KEYS)
    if key is None:
        return FAMILY_ACTIVATION.get(model_type, "silu")
    if not isinstance(v, str) or not v.strip():
        raise UserError(f"{key} is {json.dumps(v)[:40]}, not the name of an activation", file=file, field=key,
                        hint='write it as transformers names it, e.g. "silu" or "gelu_new"')
    return v.strip()


def _flag(cfg: dict, key: str, file: str | None, default: bool) -> bool:
    v = cfg.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise UserError(f"{key} is {json.dumps(v)[:40]}, not true or false", file=file, field=key,
                        hint="JSON booleans are written true / false, without quotes")
    return v


@dataclass(frozen=True)
class Matrix:
    """Weight matrices of one kind in the whole model: ``count`` of them held, ``active`` of them
    multiplied for each token (an expert: only when routed to), ``linear``: an ``nn.Linear`` (what
    QLoRA stores in 4 bits); a fused expert tensor or a router stays in the compute dtype."""

    inp: int
    out: int
    count: int
    active: int
    linear: bool = True


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    supported: bool  # counted exactly (a family above); else a generic estimate, labelled
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # the MLP width a token goes through (a MoE: its active experts' and the shared one's)
    vocab: int
    tied: bool
    qkv_bias: bool
    norms_per_layer: int
    params_total: int
    params_linear: int  # nn.Linear weights of the decoder (what LoRA targets and 4-bit quantizes)
    params_embed: int
    params_lm_head: int  # 0 when tied to the embeddings
    params_other: int  # norms, biases, position embeddings, fused experts and routers
    matrices: tuple[Matrix, ...] = ()
    lora_unit: int = 0  # LoRA parameters at rank 1 (PEFT's all-linear); a rank multiplies it
    gated: bool = True
    experts: int = 0  # 0: a dense model
    experts_active: int = 0
    params_extra: int = 0  # a vision tower and projector (frozen weights held in memory)
    extra_label: str = ""
    container: str = ""  # a vision-language model's own type (its language model's is model_type)
    max_positions: int | None = None  # the context the model was trained for (max_position_embeddings)
    assumed: tuple[str, ...] = ()  # defaults the count had to assume, said in the plan output
    activation: str = "silu"  # the MLP's activation (transformers' name): what backward keeps depends on it
    attn_dropout: float = 0.0  # the model's own dropout on attention scores (GPT-2: 0.1; most others 0)
    hidden_dropout: float = 0.0  # ... on the attention's and the MLP's outputs (residual dropout)

    @property
    def mlp_width(self) -> int:
        """The MLP's up projections' total width: gate and up (gated), or one up projection."""
        return self.intermediate * (2 if self.gated else 1)

    @property
    def q_out(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_out(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params_linear_active(self) -> int:
        """Weights multiplied for each token (all of a dense model's; a MoE's routed experts only)."""
        return sum(m.inp * m.out * m.active for m in self.matrices)

    @property
    def params_matrices(self) -> int:
        """Every weight matrix of the decoder (a MoE's experts included)."""
        return sum(m.inp * m.out * m.count for m in self.matrices)

    @property
    def linear_in_active(self) -> int:
        return sum(m.inp * m.active for m in self.matrices)

    @property
    def linear_out_active(self) -> int:
        return sum(m.out * m.active for m in self.matrices)

    def linear_sizes(self) -> list[tuple[int, int]]:
        """(elements of one weight, how many) for each kind of nn.Linear (4-bit under QLoRA)."""
        return [(m.inp * m.out, m.count) for m in self.matrices if m.linear]

    def lora_params(self, rank: int) -> int:
        """Adapter parameters for LoRA on every linear layer of the decoder (PEFT's all-linear)."""
        return rank * self.lora_unit

    def describe(self) -> str:
        label = self.model_type if self.supported else f"{self.model_type} (generic estimate)"
        if self.container:
            label = f"{self.container} (language model {label})"
        n = self.params_total
        text = f"{label}, {_count(n)} parameters"
        if self.experts:
            text += (f" ({self.experts} experts, {self.experts_active} a token: "
                     f"{_count(self.params_active)} active)")
        if self.params_extra:
            text += f"; with {self.extra_label} ({_count(self.params_extra)})"
        return text

    @property
    def params_active(self) -> int:
        return self.params_total - self.params_extra - sum(m.inp * m.out * (m.count - m.active)
                                                            for m in self.matrices)

    @classmethod
    def from_config(cls, cfg: dict, file: str | None = None) -> ModelShape:
        """``file`` names the config.json in errors (a field of the wrong type or size is refused,
        with its name, before any arithmetic)."""
        model_type = cfg.get("model_type", "?")
        model_type = model_type if isinstance(model_type, str) else "?"
        text = cfg.get("text_config")
        model_type = TEXT_FAMILY.get(model_type, model_type)
        if isinstance(text, dict) and "hidden_size" not in cfg:
            text = _with_defaults(cfg, text)  # a vision-language config names only what differs
            sub = text.get("model_type", model_type)
            cfg = {**text, "model_type": sub if isinstance(sub, str) else model_type}
            model_type = cfg["model_type"]
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
                   if _get(cfg, k) is None]
        if missing:
            raise UserError(f"config has no {', '.join(missing)}", file=file, field=missing[0],
                            hint="is this a causal language model's config.json?")
        assumed: list[str] = []
        h = _dim(cfg, "hidden_size", file)
        L = _dim(cfg, "num_hidden_layers", file, limit=MAX_LAYERS)
        heads = _dim(cfg, "num_attention_heads", file)
        vocab = _dim(cfg, "vocab_size", file, limit=MAX_VOCAB)
        if model_type == "falcon":
            new_arch = _flag(cfg, "new_decoder_architecture", file, False)
            kv_default = 1 if _flag(cfg, "multi_query", file, True) and not new_arch else heads
            kv = _dim(cfg, "num_kv_heads", file, default=kv_default) if new_arch else kv_default
        else:
            kv = _dim(cfg, "num_key_value_heads", file, default=heads)
        if kv > heads:
            raise UserError(f"num_key_value_heads {kv} is more than num_attention_heads {heads}", file=file,
                            field="num_key_value_heads", hint="check the model's config.json")
        head_dim = _dim(cfg, "head_dim", file, default=max(1, h // heads))
        if _get(cfg, "intermediate_size") is None and model_type not in ("gpt2", "falcon"):
            assumed.append(f"intermediate_size 4 x hidden = {4 * h:,} (the config has none)")
        if model_type == "falcon":  # Falcon's own field (it has no intermediate_size)
            inter = _dim(cfg, "ffn_hidden_size", file, default=4 * h)
        else:
            inter = _dim(cfg, "intermediate_size", file, default=4 * h)
        for flag in ("tie_word_embeddings", "attention_bias", "mlp_bias", "bias"):
            _flag(cfg, flag, file, False)
        positions, _ = _first(cfg, ("max_position_embeddings", "n_positions"))
        activation = _activation(cfg, model_type, file)
        attn_dropout = _probability(cfg, ATTN_DROPOUT_KEYS, file, FAMILY_DROPOUT.get(model_type, 0.0))
        hidden_dropout = _probability(cfg, HIDDEN_DROPOUT_KEYS, file, FAMILY_DROPOUT.get(model_type, 0.0))
        if model_type == "falcon":  # its attention_dropout is applied to the attention's output, not the scores
            attn_dropout, hidden_dropout = 0.0, max(attn_dropout, hidden_dropout)
        max_positions = _dim(cfg, positions, file, limit=2**31) if positions else None
        if model_type in PLAIN:
            parts = _plain(cfg, model_type, h, L, heads, kv, head_dim, inter, vocab, file)
        elif model_type in MOE:
            parts = _moe(cfg, model_type, h, L, heads, kv, head_dim, inter, file)
        else:
            parts = _gated(cfg, model_type, h, L, heads, kv, head_dim, inter)
        matrices, lora_unit, other, norms, mlp_width, tied_default, extra = parts
        tied = _flag(cfg, "tie_word_embeddings", file, tied_default)
        embed = vocab * h
        lm_head = 0 if tied else vocab * h
        linear = sum(m.inp * m.out * m.count for m in matrices if m.linear)
        fused = sum(m.inp * m.out * m.count for m in matrices if not m.linear)
        other += fused
        return cls(model_type=model_type, supported=model_type in SUPPORTED, hidden=h, layers=L, heads=heads,
                   kv_heads=kv, head_dim=head_dim, intermediate=mlp_width, vocab=vocab, tied=tied,
                   qkv_bias=extra.get("qkv_bias", False), norms_per_layer=norms,
                   params_total=linear + other + embed + lm_head, params_linear=linear, params_embed=embed,
                   params_lm_head=lm_head, params_other=other, matrices=tuple(matrices), lora_unit=lora_unit,
                   gated=model_type not in PLAIN, experts=extra.get("experts", 0),
                   experts_active=extra.get("experts_active", 0), assumed=tuple(assumed),
                   max_positions=max_positions, activation=activation, attn_dropout=attn_dropout,
                   hidden_dropout=hidden_dropout)


def _with_defaults(cfg: dict, text: dict) -> dict:
    """A vision-language model's text config with transformers' defaults for what the file leaves
    out (LLaVA's names only its vocabulary); the file's own values as they are when transformers
    cannot read it."""
    try:
        from transformers import AutoConfig

        full = AutoConfig.for_model(**cfg).get_text_config().to_dict()
    except Exception:  # noqa: BLE001 - any failure: the file's values, checked field by field below
        return text
    return {**full, **text} if isinstance(full, dict) else text


VISION_PARTS = ("vision", "visual", "multi_modal_projector", "mm_projector", "image_newline")


def with_vision_tower(shape: ModelShape, cfg: dict, file: str | None = None) -> ModelShape:
    """A vision-language config: the language model as counted above, plus the vision tower and
    projector counted exactly by building the model on the meta device (no weights, no memory),
    held as frozen weights. A config transformers cannot build is refused with why."""
    vision = cfg.get("vision_config") or {}
    for key, limit in (("num_hidden_layers", 1000), ("depth", 1000), ("hidden_size", 2**16), ("embed_dim", 2**16),
                       ("intermediate_size", 2**18)):
        v = vision.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= limit):
            raise UserError(f"vision_config.{key} is {json.dumps(v)[:40]}: not a whole number from 1 to {limit:,}",
                            file=file, field=f"vision_config.{key}", hint="check the model's config.json")
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            try:
                model = AutoModelForImageTextToText.from_config(config)
            except (ValueError, KeyError):
                model = AutoModelForCausalLM.from_config(config)
        params = dict(model.named_parameters())
    except Exception as e:  # noqa: BLE001 - whatever transformers says, the user gets it with the file
        raise UserError(f"a vision-language config transformers cannot build ({type(e).__name__}: "
                        f"{str(e)[:160]})", file=file, field="vision_config",
                        hint="check the config.json; a newer transformers may know it") from None
    extra = sum(p.numel() for n, p in params.items() if any(k in n for k in VISION_PARTS))
    total = sum(p.numel() for p in params.values())
    # the whole is exact; a language model the formulas do not know gets its remainder as "other" weights
    return replace(shape, params_extra=extra, params_total=total,
                   params_other=shape.params_other + extra + (total - extra - shape.params_total),
                   extra_label="vision tower and projector, counted on the meta device",
                   container=str(cfg.get("model_type") or "?"))


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _attention(h: int, q: int, kv: int, L: int, fused: bool) -> tuple[list[Matrix], int]:
    """q, k, v and o projections of L layers (fused: one qkv matrix), and their LoRA rank-1 size."""
    if fused:
        return [Matrix(h, q + 2 * kv, L, L), Matrix(q, h, L, L)], L * ((h + q + 2 * kv) + (q + h))
    return ([Matrix(h, q, L, L), Matrix(h, kv, 2 * L, 2 * L), Matrix(q, h, L, L)],
            L * ((h + q) + 2 * (h + kv) + (q + h)))


def _gated(cfg: dict, model_type: str, h: int, L: int, heads: int, kv: int, head_dim: int, inter: int):
    """Llama-style decoders (and any architecture not known: the same formula, labelled an estimate)."""
    q, kvo = heads * head_dim, kv * head_dim
    fused = model_type == "phi3"  # qkv_proj and gate_up_proj
    mats, lora = _attention(h, q, kvo, L, fused)
    if fused:
        mats += [Matrix(h, 2 * inter, L, L), Matrix(inter, h, L, L)]
        lora += L * ((h + 2 * inter) + (inter + h))
    else:
        mats += [Matrix(h, inter, 2 * L, 2 * L), Matrix(inter, h, L, L)]
        lora += L * (2 * (h + inter) + (inter + h))
    qkv_bias = model_type == "qwen2" or bool(cfg.get("attention_bias", False))
    o_bias = bool(cfg.get("attention_bias", False)) and model_type != "qwen2"
    mlp_bias = bool(cfg.get("mlp_bias", False))
    norms = 4 if model_type in ("gemma2", "gemma3_text") else 2
    biases = ((q + 2 * kvo) * qkv_bias + h * o_bias + (2 * inter + h) * mlp_bias) * L
    other = biases + norms * h * L + h  # per-layer norms and the final norm
    if model_type in ("qwen3", "gemma3_text"):  # a norm over each head's queries and keys
        other += 2 * head_dim * L
    elif model_type == "olmo2":  # a norm over all queries and over all keys
        other += (q + kvo) * L
    return mats, lora, other, norms, inter, model_type.startswith("gemma"), {"qkv_bias": qkv_bias}


def _moe(cfg: dict, model_type: str, h: int, L: int, heads: int, kv: int, head_dim: int, inter: int,
         file: str | None):
    """Mixtral and Qwen2-MoE: every expert in memory, the routed ones in each token's time. In
    transformers 5 the experts are fused 3-D tensors: QLoRA does not quantize them (nor the router);
    PEFT adapts Mixtral's as parameters (rank x experts rows) and leaves Qwen2-MoE's alone (both
    measured on PEFT 0.21 against a built model: tests/test_plan.py)."""
    q, kvo = heads * head_dim, kv * head_dim
    mats, lora = _attention(h, q, kvo, L, fused=False)
    if model_type == "mixtral":
        E = _dim(cfg, "num_local_experts", file, default=8)
        k = _dim(cfg, "num_experts_per_tok", file, default=2)
        e_inter, shared, sparse = inter, 0, L
        qkv_bias = False
    else:
        E = _dim(cfg, "num_experts", file, default=60)
        k = _dim(cfg, "num_experts_per_tok", file, default=4)
        e_inter = _dim(cfg, "moe_intermediate_size", file, default=1408)
        shared = _dim(cfg, "shared_expert_intermediate_size", file, default=5632)
        step = _dim(cfg, "decoder_sparse_step", file, default=1)
        only = cfg.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) for i in only):
            raise UserError("mlp_only_layers is not a list of layer numbers", file=file, field="mlp_only_layers")
        sparse = sum(1 for i in range(L) if i not in only and (i + 1) % step == 0)
        qkv_bias = True
    if k > E:
        raise UserError(f"num_experts_per_tok {k} is more than the {E} experts", file=file,
                        field="num_experts_per_tok")
    dense = L - sparse
    if dense:  # layers without experts: a dense gated MLP
        mats += [Matrix(h, inter, 2 * dense, 2 * dense), Matrix(inter, h, dense, dense)]
        lora += dense * (2 * (h + inter) + (inter + h))
    mats += [Matrix(h, E, sparse, sparse, linear=False),  # the router
             Matrix(h, 2 * e_inter, E * sparse, k * sparse, linear=False),  # gate and up, fused
             Matrix(e_inter, h, E * sparse, k * sparse, linear=False)]
    if model_type == "mixtral":  # PEFT 0.21's all-linear adapts Mixtral's router and fused experts, not Qwen2-MoE's
        lora += sparse * ((h + E) + 2 * E * (h + 2 * e_inter) + E * (e_inter + h))
    if shared:
        mats += [Matrix(h, shared, 2 * sparse, 2 * sparse), Matrix(shared, h, sparse, sparse),
                 Matrix(h, 1, sparse, sparse)]  # the shared expert and its gate
        lora += sparse * (2 * (h + shared) + (shared + h) + (h + 1))
    biases = (q + 2 * kvo) * qkv_bias * L
    other = biases + 2 * h * L + h
    width = (k * e_inter + shared) if sparse else inter
    return mats, lora, other, 2, width, False, {"qkv_bias": qkv_bias, "experts": E, "experts_active": k}


def _plain(cfg: dict, model_type: str, h: int, L: int, heads: int, kv: int, head_dim: int, inter: int,
           vocab: int, file: str | None):
    """GPT-NeoX (Pythia), GPT-2 and Falcon: an up and a down projection, layer norms with biases."""
    q, kvo = heads * head_dim, kv * head_dim
    mats, lora = _attention(h, q, kvo, L, fused=True)
    mats += [Matrix(h, inter, L, L), Matrix(inter, h, L, L)]
    lora += L * 2 * (h + inter)
    if model_type == "gpt_neox":
        bias = _flag(cfg, "attention_bias", file, True)
        biases = L * ((q + 2 * kvo + h) * bias + inter + h)
        norms, other_extra, tied = 2, 2 * h, False
    elif model_type == "gpt2":
        biases = L * (q + 2 * kvo + h + inter + h)
        positions = _dim(cfg, "n_positions", file, default=1024)
        norms, other_extra, tied = 2, 2 * h + positions * h, True
    else:  # falcon
        bias = _flag(cfg, "bias", file, False)
        biases = L * (q + 2 * kvo + h + inter + h) * bias
        if _flag(cfg, "new_decoder_architecture", file, False):
            norms = _dim(cfg, "num_ln_in_parallel_attn", file, default=2)
        else:
            norms = 1 if _flag(cfg, "parallel_attn", file, True) else 2
        other_extra, tied = 2 * h, True
    other = biases + norms * 2 * h * L + other_extra  # layer norms: a weight and a bias each
    return mats, lora, other, norms, inter, tied, {"qkv_bias": True}


def read_shape(path: str | Path) -> ModelShape:
    """The shape of the model whose folder or config.json is ``path``; errors name the file and field.
    A vision-language config's vision tower is counted too (``with_vision_tower``)."""
    p = Path(path)
    file = str(p / "config.json" if p.is_dir() else p)
    cfg = read_config(p)
    shape = ModelShape.from_config(cfg, file=file)
    if isinstance(cfg.get("vision_config"), dict):
        shape = with_vision_tower(shape, cfg, file)
    return shape


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
