"""Stage B, direct preference optimisation: prompt/chosen/rejected pairs through TRL's
``DPOTrainer``, optionally with an NLL term on the chosen answers (RPO)."""

from __future__ import annotations

from engine.stages import BETA, Option, PlanFactors, Stage, register


@register
class DPO(Stage):
    name = "dpo"
    help = "prompt/chosen/rejected pairs (DPOTrainer)"
    trainer_name = "DPOTrainer"
    data_kind = "dpo"
    unit = "pairs"
    default_lr = {"full": 5e-7, "lora": 5e-6, "qlora": 5e-6}
    options = (
        BETA,
        Option("sft_weight", float, 0.0, "DPO: add W x the NLL of the chosen answers (RPO), so DPO does not simply "
                                         "push both answers down (default 0)"),
    )
    factors = PlanFactors(sequences=2, reference_passes=1.0)
    charts = (("DPO rewards", ("rewards/margins", "rewards/accuracies")),)
    series = {"rewards/margins": "reward margin", "rewards/accuracies": "reward accuracy"}
    echo = (("rewards/margins", "margin", ".3f"), ("rewards/accuracies", "acc", ".2f"))

    def dataset_rows(self, spec, rows: list[dict]) -> list[dict]:
        from engine.data import as_messages

        return [{"prompt": as_messages(r["prompt"], "user"), "chosen": as_messages(r["chosen"], "assistant"),
                 "rejected": as_messages(r["rejected"], "assistant")} for r in rows]

    def trainer_config(self, spec, common: dict):
        from trl import DPOConfig

        weight = self.option(spec, "sft_weight")
        losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, weight]} if weight else {}
        return DPOConfig(**common, beta=self.option(spec, "beta"), precompute_ref_log_probs=spec.precompute_ref,
                         **losses)

    def make_trainer(self, spec, kwargs: dict, ref_model):
        from trl import DPOTrainer

        return DPOTrainer(ref_model=ref_model, **kwargs)
