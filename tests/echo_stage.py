"""A fourth training stage, written as a plugin would write one, outside rounds' own modules:
registering it here is all it takes (tests/test_stages.py plans it, trains it and monitors it)."""

from __future__ import annotations

from engine.stages import Option, PlanFactors, Stage, register


@register
class EchoStage(Stage):
    """A fourth stage, as a plugin would write one: SFT's data, three sequences an example for the
    planner, an option of its own, and a metric of its own logged by its trainer and charted."""

    name = "echo"
    help = "a test stage: SFT with a metric of its own"
    trainer_name = "SFTTrainer"
    data_kind = "sft"
    unit = "questions"
    default_lr = {"full": 1e-5, "lora": 1e-4, "qlora": 1e-4}
    options = (Option("echo_gain", float, 2.0, "what the echo metric is multiplied by"),)
    factors = PlanFactors(sequences=3)
    charts = (("echo", ("echo/gain_loss", "loss")),)
    series = {"echo/gain_loss": "echo gain x loss"}
    echo = (("echo/gain_loss", "echo", ".3f"),)

    def dataset_rows(self, spec, rows):
        return [{"prompt": [{"role": "user", "content": r["question"]}],
                 "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows]

    def trainer_config(self, spec, common):
        from trl import SFTConfig

        return SFTConfig(**common)

    def make_trainer(self, spec, kwargs, ref_model):
        from trl import SFTTrainer

        gain = self.option(spec, "echo_gain")

        class EchoTrainer(SFTTrainer):
            def log(self, logs, *a, **k):
                if "loss" in logs:
                    logs["echo/gain_loss"] = gain * logs["loss"]
                super().log(logs, *a, **k)

        return EchoTrainer(**kwargs)
