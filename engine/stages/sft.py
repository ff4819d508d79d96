"""Stage A, supervised fine-tuning: question/answer data through TRL's ``SFTTrainer``, loss on
the answer tokens only."""

from __future__ import annotations

from engine.stages import PlanFactors, Stage, register


@register
class SFT(Stage):
    name = "sft"
    help = "question/answer data (SFTTrainer)"
    trainer_name = "SFTTrainer"
    data_kind = "sft"
    unit = "examples"
    default_lr = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4}
    factors = PlanFactors(sequences=1, adapter_dropout=True)

    def dataset_rows(self, spec, rows: list[dict]) -> list[dict]:
        from engine.data import prompt_text

        return [{"prompt": [{"role": "user", "content": prompt_text(r)}],
                 "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows]

    def trainer_config(self, spec, common: dict):
        from trl import SFTConfig

        return SFTConfig(**common, completion_only_loss=True)

    def make_trainer(self, spec, kwargs: dict, ref_model):
        from trl import SFTTrainer

        return SFTTrainer(**kwargs)
