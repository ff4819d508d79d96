"""KTO (Kahneman-Tversky optimisation): unpaired examples, each answer labelled desirable or
undesirable, through TRL's ``KTOTrainer``. It needs no reference answer and no pairing: a
faithful answer is desirable and a hallucinated one undesirable on its own (``rounds pairs
SESSION --kto`` writes them from assessment marks), or any TRL unpaired-preference file
(``prompt``, ``completion``, ``label``).

KTO estimates its KL term from mismatched (prompt, completion) pairs built inside each
micro-batch, so a micro-batch needs at least two examples; TRL also requires sequential
sampling for that pairing (``KTOConfig``'s default).
"""

from __future__ import annotations

from typing import Any

from engine.data import DataReport, Kind, as_messages, check_conversation, register_kind
from engine.stages import BETA, Option, PlanFactors, Stage, register

DESIRABLE = {"true", "1", "yes", "y", "t", "desirable", "good", "faithful"}
UNDESIRABLE = {"false", "0", "no", "n", "f", "undesirable", "bad", "hallucinated"}


def _label(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    return True if text in DESIRABLE else False if text in UNDESIRABLE else None


def _check(row: dict, line: int, mapping: dict[str, str], report: DataReport) -> bool:
    if not check_conversation(row, line, mapping, report, ("prompt", "completion"),
                              "an example needs a prompt and an answer"):
        return False
    label = _label(row["label"])
    if label is None:
        report.add(f"must be true (desirable) or false (undesirable), got {row['label']!r}", line=line,
                   field=mapping["label"], hint="use true/false, 1/0 or desirable/undesirable")
        return False
    row["label"] = label
    return True


def _implicit_prompt(rec: dict, mapping: dict[str, str]) -> str | None:
    """TRL's implicit-prompt unpaired layout: no prompt, the ``completion`` the whole conversation;
    the prompt is every message before its last run of assistant turns."""
    p, c = mapping["prompt"], mapping["completion"]
    if (p in rec and rec[p] is not None) or not isinstance(rec.get(c), list) or not rec[c]:
        return None
    messages = rec[c]
    if not all(isinstance(m, dict) for m in messages):
        return None
    cut = len(messages)
    while cut > 0 and messages[cut - 1].get("role") == "assistant":
        cut -= 1
    if cut == 0 or cut == len(messages):
        return None  # said as a missing prompt, with the hint
    rec[p], rec[c] = messages[:cut], messages[cut:]
    return "prompt: the messages before the completion's last assistant turn"


register_kind(Kind("kto", "KTO examples", ("prompt", "completion", "label"), ("id",), _check,
                   lambda r: (as_messages(r["prompt"], "user"), [as_messages(r["completion"], "assistant")]),
                   derive=_implicit_prompt, implicit=("prompt",),
                   derive_hint="or write the completion as the whole conversation, the user's turn first "
                               "(TRL's implicit-prompt layout)"))


@register
class KTO(Stage):
    name = "kto"
    help = "unpaired prompt/completion/label examples: desirable or undesirable answers (KTOTrainer)"
    trainer_name = "KTOTrainer"
    data_kind = "kto"
    unit = "examples"
    default_lr = {"full": 5e-7, "lora": 5e-6, "qlora": 5e-6}
    options = (
        BETA,
        Option("desirable_weight", float, 1.0, "KTO: weight of the desirable examples' loss (default 1; raise it "
                                               "when they are fewer than the undesirable ones)"),
        Option("undesirable_weight", float, 1.0, "KTO: weight of the undesirable examples' loss (default 1)"),
    )
    # the completion forward and backward; no-grad: the policy on the KL completions, the reference on both
    factors = PlanFactors(sequences=1, reference_passes=2.0, extra_forwards=1.0)
    min_micro_batch = 2
    charts = (("KTO rewards", ("rewards/margins", "kl")), ("KTO log-probs", ("logps/chosen", "logps/rejected")))
    series = {"rewards/margins": "reward margin", "kl": "KL estimate", "logps/chosen": "log-prob desirable",
              "logps/rejected": "log-prob undesirable"}
    echo = (("rewards/margins", "margin", ".3f"), ("kl", "kl", ".3f"))

    def dataset_rows(self, spec, rows: list[dict]) -> list[dict]:
        """Shuffled (with the run's seed): TRL reads KTO data in order and estimates the KL term from
        each micro-batch's other examples, which must answer other prompts; a file written question by
        question (an answer beside its reference, as `rounds pairs --kto` writes them) would pair a
        prompt with its own other answer."""
        import random

        items = [{"prompt": as_messages(r["prompt"], "user"), "completion": as_messages(r["completion"], "assistant"),
                  "label": bool(r["label"])} for r in rows]
        random.Random(spec.seed).shuffle(items)
        return items

    def trainer_config(self, spec, common: dict):
        from trl import KTOConfig

        return KTOConfig(**common, beta=self.option(spec, "beta"), precompute_ref_log_probs=spec.precompute_ref,
                         desirable_weight=self.option(spec, "desirable_weight"),
                         undesirable_weight=self.option(spec, "undesirable_weight"))

    def make_trainer(self, spec, kwargs: dict, ref_model):
        from trl import KTOTrainer

        return KTOTrainer(ref_model=ref_model, **kwargs)
