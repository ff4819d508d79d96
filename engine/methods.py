"""The training methods, one table read by the recipe (what to load and wrap) and the planner
(what a step holds): full parameters, LoRA adapters, and LoRA over a 4-bit base (QLoRA)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UserError


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    adapters: bool  # train LoRA adapters on all linear layers; the base weights stay frozen
    quantize: bool  # the frozen base is loaded in 4-bit NF4 (bitsandbytes)
    adapter_bytes: int = 4  # bytes of a trainable adapter parameter (TRL casts QLoRA adapters to bf16)


METHODS = {
    "full": Method("full", "every parameter is trained (a frozen reference is a second copy)", False, False),
    "lora": Method("lora", "PEFT LoRA on all linear layers; a reference is the same weights with adapters off",
                   True, False),
    "qlora": Method("qlora", "4-bit NF4 base weights + LoRA", True, True, adapter_bytes=2),
}
PLAN_CHOICES = ("auto", *METHODS)  # auto: the planner's recommendation


def get(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown plan {name!r}", field="--plan", hint=f"use {', '.join(PLAN_CHOICES)}")
    return METHODS[name]
