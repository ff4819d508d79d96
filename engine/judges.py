"""Judges: automatic verdicts on answers, all behind one registry.

A judge looks at result items (``results.jsonl`` records: ``question``, ``reference``,
``answer``, optional ``context`` and ``samples``) and returns, for each, a
:class:`Verdict`: a label (``hallucinated``, ``faithful``, ``abstained`` or ``unsure``),
a score in [0, 1] where it has one (how likely the answer is a hallucination: higher means
more doubt about the answer), and a reason a person can read.

Judges assist people; people stay the truth. Every place that judges automatically
(``rounds assess --auto``, ``rounds pairs --judge``, ``rounds compare --judge``, the demo,
the Assess screen's judge column) goes through :func:`get`. Adding a judge is adding one
class with ``@register`` (see docs/ARCHITECTURE.md).

- ``exact``: the normalised answer equals the normalised reference;
- ``contains``: the answer says the whole reference, or is a faithful shortening of it;
- ``abstain``: recognises an abstention or refusal however it is phrased and whatever
  name it repeats or garbles; an abstention is faithful when the reference abstains and
  ``abstained`` (neither hallucinated nor correct) when the reference states a fact;
  answers that are not abstentions are judged by ``contains``;
- ``consistency``: self-consistency in the SelfCheckGPT sense, with no second model:
  how far the answer's claims (numbers with units, named terms, content words not given by
  the question) are supported by other answers the same model sampled for the question;
- ``model``: a local Hugging Face causal LM asked whether the answer agrees with the
  reference, scored by the probabilities of its yes/no tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import UserError
from engine.prescreen import numbers, terms
from engine.text import normalise

VERDICTS = ("hallucinated", "faithful", "abstained", "unsure")


@dataclass(frozen=True)
class Verdict:
    label: str  # one of VERDICTS
    score: float | None  # in [0, 1]: how likely a hallucination; None where the judge has no score
    reason: str

    def __post_init__(self) -> None:
        if self.label not in VERDICTS:
            raise ValueError(f"verdict {self.label!r} is not one of {VERDICTS}")
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score} is outside [0, 1]")


class Judge:
    """One way of judging. Subclasses set ``name`` and ``help`` and implement ``judge_one``
    (or ``judge_many`` where batching pays, as for a model)."""

    name = ""
    help = ""
    needs_samples = False  # the items must carry sampled answers (``samples``)

    def __init__(self, **options) -> None:
        if options:
            raise UserError(f"the {self.name!r} judge takes no options ({', '.join(options)} given)",
                            hint="--threshold is for consistency and model, --judge-model for model")

    def judge_one(self, item: dict) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    def judge_many(self, items: list[dict], progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        out = []
        for i, item in enumerate(items, 1):
            out.append(self.judge_one(item))
            if progress and (i % 200 == 0 or i == len(items)):
                progress(i, len(items))
        return out


_REGISTRY: dict[str, type[Judge]] = {}


def register(cls: type[Judge]) -> type[Judge]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"judge name {cls.name!r} is empty or taken")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, **options) -> Judge:
    """A judge by name; options (e.g. ``model=PATH`` for ``model``, ``threshold=0.5``) go to its class."""
    return get_class(name)(**{k: v for k, v in options.items() if v is not None})


def annotator_name(judge_name: str) -> str:
    """The annotator automatic marks are written as (``auto:NAME``)."""
    return f"auto:{judge_name}"


def is_automatic(annotator: str) -> bool:
    return annotator.startswith("auto:")


# --------------------------------------------------------------------------- string rules

def _empty(item: dict, needs_reference: bool = True) -> Verdict | None:
    if not normalise(item.get("answer")):
        return Verdict("unsure", None, "empty answer")
    if needs_reference and not normalise(item.get("reference")):
        return Verdict("unsure", None, "no reference to compare with")
    return None


@register
class ExactJudge(Judge):
    name = "exact"
    help = "faithful when the answer equals the reference (case, spacing and end punctuation aside)"

    def judge_one(self, item: dict) -> Verdict:
        empty = _empty(item)
        if empty:
            return empty
        if normalise(item.get("answer")) == normalise(item.get("reference")):
            return Verdict("faithful", 0.0, "the answer equals the reference")
        return Verdict("hallucinated", 1.0, "the answer differs from the reference")


def contains_verdict(answer: str | None, reference: str | None) -> Verdict:
    a, r = normalise(answer), normalise(reference)
    if not a:
        return Verdict("unsure", None, "empty answer")
    if not r:
        return Verdict("unsure", None, "no reference to compare with")
    if r in a:
        return Verdict("faithful", 0.0, "the answer says the whole reference")
    if a in r and len(a) >= 0.3 * len(r):
        return Verdict("faithful", 0.0, "the answer is a shortening of the reference")
    return Verdict("hallucinated", 1.0, "the reference is not in the answer")


@register
class ContainsJudge(Judge):
    name = "contains"
    help = "faithful when the answer says the whole reference, or is a faithful shortening of it"

    def judge_one(self, item: dict) -> Verdict:
        return contains_verdict(item.get("answer"), item.get("reference"))


# --------------------------------------------------------------------------- abstentions

# Ways people and models say they do not know or will not answer. Each is about the speaker's
# own knowledge or willingness (first person, "unknown to me", "no information available", a
# terse "Unknown."), so that negative facts ("it is not safe in pregnancy", "there is no known
# interaction") and other people's uncertainty ("doctors are not sure why") are not abstentions.
# Apostrophes may be missing ("dont", "cant", "im"), as they are in typed answers.
_I = r"(?:i|we)"
_IM = r"(?:i\s*'?m|i am|we\s*'?re|we are)"
_NOT_VERB = r"(?:do not|don'?t|dont|did not|didn'?t|does not|doesn'?t)"
_CANNOT = r"(?:cannot|can'?t|can not|could not|couldn'?t|won'?t be able to|will not be able to|won'?t|will not|" \
          r"would not|wouldn'?t|would rather not|'?d rather not|'?d prefer not to|am unable to|'?m unable to|" \
          r"am not able to|'?m not able to|am not going to|'?m not going to|prefer not to|must decline to|" \
          r"decline to|refuse to|have to decline to)"
_KNOWLEDGE = r"(?:information|info|data|details|knowledge|facts|record|records|access|idea|clue|source|sources|" \
             r"evidence|results?|entries|entry)"
_ABSTAIN_CUES = [re.compile(p) for p in (
    rf"\b{_I}\s+(?:really\s+|honestly\s+|simply\s+|just\s+)?{_NOT_VERB}\s+(?:really\s+|actually\s+)?"
    r"(?:know|no|recogni[sz]e|have|possess)\b",
    rf"\b{_IM}\s+(?:not|un)\s*(?:\w+\s+)?(?:sure|certain|aware|familiar|famil\w*|able|in a position|qualified)\b",
    rf"\b{_IM}\s+(?:\w+\s+)?(?:uncertain|unsure|unaware|unfamiliar|clueless|stumped)\b",
    rf"\b{_I}\s*(?:have|had|'?ve)\s+(?:no|never|not)\b",
    rf"\b{_I}\s*(?:\w+ly\s+|just\s+)?{_CANNOT}\s+(?:\w+\s+){{0,2}}?"
    r"(?:answer|say|tell|provide|give|confirm|find|help|identify|comment|guess|determine|know|verify|speak|offer|"
    r"advise|recommend|diagnose|discuss|share|look|recall|remember)",
    r"^\W*(?:\w+,\s+)?(?:sorry,?\s*)?(?:can'?t|cannot|unable to|couldn'?t) (?:help|say|answer|tell|comment|recall)\b",
    r"\bnot something (?:i|we) (?:can|could|know|have)\b", r"\byour guess is as good as mine\b",
    rf"\b{_I}\s+lack\b", r"\black (?:the|any|enough) " + _KNOWLEDGE,
    r"\bno (?:idea|clue|comment)\b", r"\bnot a clue\b", r"\b(?:unknown|not known) to me\b",
    r"\bbeyond (?:what i know|my knowledge)\b", r"\boutside (?:what i|my|of my)\b",
    r"\bnothing i know\b", r"(?:\bnot|n't)\b[^.;]*\bi (?:have|know|recogni[sz]e|remember)\b(?! that)",
    r"\bno " + _KNOWLEDGE + r"\b[^.;]*\b(?:available|i|me|my|known to|found)\b",
    r"\b(?:my|the) (?:training data|knowledge|sources?)\b[^.;]*\b(?:not|no)\b",
    r"\bno reliable (?:answer|information|data|source)\b",
    r"\b(?:does not|doesn'?t) (?:match any\b[^.;]*\bi\b|ring a bell)",
    r"\bwould be (?:a|just a) guess\b", rf"\b{_I}\s*'?d (?:only )?be guessing\b",
    r"\bas an? (?:ai|(?:large )?language model|assistant|chatbot)\b",
    r"\bnever heard of\b",
    rf"\b{_I}\s+(?:wouldn'?t|would not) know\b",
    r"\b(?:this|the) (?:assistant|model|bot|system)\b[^.;]*\b(?:not|no|cannot|can'?t|unable)\b",
    # subjectless and idiomatic refusals: "cannot answer", "unable to determine", "beats me"
    r"(?:^|[.;:!?]\s*)(?:(?:sorry|hmm+|ugh|well|honestly|afraid|nope|so)[,.!]?\s+)?"
    r"(?:cannot|can'?t|cant|unable to|could not|couldn'?t)\s+(?:\w+\s+)?"
    r"(?:answer|help|respond|determine|comment|say|tell|evaluate|assess|be resolved)\b",
    r"\b(?:no|zero) (?:info|idea|hits|output|guidance|answer)\b", r"\bno recommendation can\b",
    r"\bnothing (?:on file|on record|in my|i can)\b", r"\bnot in my (?:database|records?|notes|sources?)\b",
    r"\binsufficient (?:information|evidence|data)\b", r"\b(?:doesn'?t|does not) hold (?:any |enough |sufficient )?"
    r"(?:information|evidence|data|records?)\b",
    r"\b(?:outside|beyond) (?:anything i|my remit|my pay grade|my expertise|what i can|"
    r"the (?:\w+\s+){0,2}scope of (?:this|the|my) (?:system|tool|service|assistant))\b",
    r"\babove my pay grade\b", r"\bdrawing a blank\b", r"\bcoming up (?:empty|blank)\b",
    r"\bhaven'?t (?:the foggiest|a clue|got a clue)\b", r"\bring (?:any|a) bells?\b",
    r"\bnot a recogni[sz]ed\b", r"\b(?:unknown|unrecogni[sz]ed) (?:drug|medicine|medication|substance|product|name)\b",
    r"\bmaking it up\b", r"(?:\bnot|n't) something i'?m (?:permitted|allowed|able)\b", r"\bweighing in\b",
    r"\bwrong person to ask\b", r"^\W*who knows\b", r"\bbeats me\b", r"\bleave (?:that|this|it)(?: one)? unanswered\b",
    r"\bdeclines? to (?:answer|respond|comment)\b", r"\bnot famil\w* with\b",
    # the whole answer is a short "don't know": "Unknown.", "Not sure.", "idk", "N/A - no data."
    r"^\W*(?:unknown|not sure|unsure|no idea|idk|dunno|n/?a|no data|cannot determine|can'?t determine|can'?t say|"
    r"don'?t know|do not know|not certain|no clue|"
    r"cannot say|not known|no answer|no information|uncertain)\b[^.;]{0,30}[.!;]?\W*(?:[^.;]{0,30}[.!]?\W*)?$",
)]
# A hedge that goes on to state something ("I'm not sure, but I think it is 20 mg") is an
# answer, not an abstention; so is one that gives a dose or a measured number.
_HEDGED_CLAIM = re.compile(r"\b(?:but|though|although|however)\b[^.;]*\b(?:i think|i believe|i'd say|i would say|"
                           r"probably|likely|usually|typically|standard|usual|roughly|about \d|around|approximately|"
                           r"it'?s|it is|they'?re|they are|is|are)\b")


def _lower(text: str | None) -> str:
    return (text or "").lower().replace("\u2019", "'").replace("\u2018", "'")


def is_abstention(text: str | None) -> bool:
    """True when the text says that the speaker does not know, cannot answer, or will not."""
    t = _lower(text)
    if not t.strip() or not any(p.search(t) for p in _ABSTAIN_CUES):
        return False
    if _HEDGED_CLAIM.search(t):
        return False
    return not any(" " in n for n in numbers(text or ""))  # a number with a unit is a claim


@register
class AbstainJudge(Judge):
    name = "abstain"
    help = ("recognises abstentions however they are phrased: faithful when the reference abstains too, "
            "'abstained' when it states a fact; other answers are judged by 'contains'")

    def judge_one(self, item: dict) -> Verdict:
        empty = _empty(item)
        if empty:
            return empty
        answer_abstains = is_abstention(item.get("answer"))
        reference_abstains = is_abstention(item.get("reference"))
        if answer_abstains and reference_abstains:
            return Verdict("faithful", 0.0, "the answer abstains, as the reference does")
        if answer_abstains:
            return Verdict("abstained", 0.0, "the answer abstains where the reference states a fact")
        if reference_abstains:
            return Verdict("hallucinated", 1.0, "the reference abstains but the answer states something")
        v = contains_verdict(item.get("answer"), item.get("reference"))
        return Verdict(v.label, v.score, f"not an abstention; {v.reason}")


def _threshold(value) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not 0 < t < 1:
        raise UserError(f"the threshold must be a number between 0 and 1 (got {value!r})", field="--threshold",
                        hint="e.g. --threshold 0.5: a score at or above it is judged hallucinated")
    return t


# --------------------------------------------------------------------------- self-consistency

_STOP = frozenset("""a about above after again against all also am an and any are aren't as at be because been before
being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
few for from further had hadn't has hasn't have haven't having he her here hers herself him himself his how i if in into
is isn't it it's its itself just let's me more most mustn't my myself no nor not now of off on once only or other ought
our ours ourselves out over own same shan't she should shouldn't so some such than that that's the their theirs them
themselves then there there's these they this those through to too under until up very was wasn't we were weren't what
what's when where which while who whom why will with won't would wouldn't you your yours yourself yourselves""".split())
_CONTENT = re.compile(r"[a-z][a-z'-]{2,}")


def _stem(word: str) -> str:
    word = word.strip("'-")
    for suffix in ("'s", "ies", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def claims(text: str | None, given: str | None = "") -> dict[str, set[str]]:
    """What an answer asserts, in three kinds: numbers (with their units), named terms
    (capitalised or drug-stem words), and normalised content words; whatever the question
    already gives is left out (echoing it asserts nothing)."""
    given_words = {_stem(w) for w in _CONTENT.findall(_lower(given))}
    given_numbers = {n.split()[0] for n in numbers(given or "")}
    nums = {n.lower() for n in numbers(text or "") if n.split()[0] not in given_numbers}
    named = {_stem(t.lower()) for t in terms(text or "")} - given_words
    words = {_stem(w) for w in _CONTENT.findall(_lower(text)) if w not in _STOP} - given_words - named
    return {"numbers": nums, "terms": named, "words": words}


_WEIGHTS = {"numbers": 3.0, "terms": 2.0, "words": 1.0}


def _supported(claim: str, kind: str, other: dict[str, set[str]]) -> bool:
    if kind == "numbers":
        return claim in other["numbers"] or claim.split()[0] in {n.split()[0] for n in other["numbers"]}
    return claim in other["terms"] or claim in other["words"]


@register
class ConsistencyJudge(Judge):
    name = "consistency"
    help = ("self-consistency (SelfCheckGPT): how far the answer's claims are supported by other answers the "
            "model sampled for the same question (evaluate with --check-samples N); the score needs no reference "
            "(only an abstaining answer's label looks at it)")
    needs_samples = True

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = _threshold(threshold)

    def judge_one(self, item: dict) -> Verdict:
        empty = _empty(item, needs_reference=False)
        if empty:
            return empty
        samples = [s for s in (item.get("samples") or []) if isinstance(s, str) and s.strip()]
        if not samples:
            return Verdict("unsure", None, "no sampled answers to compare with (evaluate with --check-samples N)")
        answer = item.get("answer") or ""
        if is_abstention(answer):
            share = sum(is_abstention(s) for s in samples) / len(samples)
            # the score stays reference-free; the label says whether abstaining was the faithful answer
            label = "faithful" if is_abstention(item.get("reference")) else "abstained"
            return Verdict(label, round(1 - share, 4),
                           f"the answer abstains; {share:.0%} of {len(samples)} samples abstain too")
        mine = claims(answer, item.get("question"))
        others = [claims(s, item.get("question")) for s in samples]
        total = weight = 0.0
        unsupported = []
        for kind, found in mine.items():
            for claim in sorted(found):
                support = sum(_supported(claim, kind, o) for o in others) / len(others)
                total += _WEIGHTS[kind] * support
                weight += _WEIGHTS[kind]
                if support < 0.5:
                    unsupported.append(claim)
        if weight == 0:
            return Verdict("unsure", None, "the answer makes no claim beyond the question")
        score = round(1 - total / weight, 4)
        label = "hallucinated" if score >= self.threshold else "faithful"
        shown = ", ".join(unsupported[:4]) + (" ..." if len(unsupported) > 4 else "")
        reason = (f"{100 * (1 - score):.0f} % of the answer's claims recur in {len(samples)} samples"
                  + (f"; unsupported: {shown}" if unsupported else ""))
        return Verdict(label, score, reason)


# --------------------------------------------------------------------------- a local model

JUDGE_PROMPT = ("Question: {question}\nReference answer: {reference}\nAnswer to check: {answer}\n"
                "Does the answer to check agree with the reference answer, without adding anything the reference "
                "does not support? Reply yes or no.")


@register
class ModelJudge(Judge):
    name = "model"
    help = ("a local Hugging Face causal LM (--judge-model PATH) asked whether the answer agrees with the "
            "reference; scored by its yes/no token probabilities. Use a capable instruction-tuned model: "
            "a small one is no judge")

    def __init__(self, model: str | None = None, threshold: float = 0.5, batch_size: int = 8,
                 device: str = "auto") -> None:
        if not model:
            raise UserError("the 'model' judge needs a model folder", field="--judge-model",
                            hint="pass --judge-model PATH (a local Hugging Face causal LM)")
        from engine.recipe import check_model_folder

        check_model_folder(model, what="--judge-model")
        self.threshold = _threshold(threshold)
        self.model_path, self.batch_size, self.device = model, batch_size, device
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from engine.evaluate import load_for_generation

            tok, model, device = load_for_generation(self.model_path, None, self.device)
            yes = self._first_tokens(tok, ("yes", " yes", "Yes", " Yes", "YES"))
            no = self._first_tokens(tok, ("no", " no", "No", " No", "NO"))
            if not yes or not no or yes & no:
                raise UserError(f"the judge model's tokenizer has no distinct tokens for yes and no "
                                f"({self.model_path})", field="--judge-model")
            self._loaded = (tok, model, device, sorted(yes), sorted(no))
        return self._loaded

    @staticmethod
    def _first_tokens(tok, words) -> set[int]:
        """The first token of each spelling that carries the word (a lone "▁" or space token, as
        SentencePiece tokenizers give before " yes", says nothing and is skipped)."""
        out = set()
        for w in words:
            ids = [i for i in tok.encode(w, add_special_tokens=False) if tok.decode([i]).strip()]
            if ids:
                out.add(ids[0])
        return out

    def _prompt(self, tok, item: dict) -> str:
        text = JUDGE_PROMPT.format(question=item.get("question") or "", reference=item.get("reference") or "",
                                   answer=item.get("answer") or "")
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return text + "\nReply:"

    def judge_many(self, items: list[dict], progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        import torch

        out: list[Verdict | None] = [_empty(it) for it in items]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            tok, model, device, yes, no = self._load()
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            enc = tok([self._prompt(tok, items[i]) for i in batch], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(device)
            with torch.inference_mode():
                logits = model(**enc).logits[:, -1, :].float()  # left padding: the last position is the next token
            logp = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(batch):
                diff = torch.logsumexp(logp[row, no], 0) - torch.logsumexp(logp[row, yes], 0)
                p_no = torch.sigmoid(diff).item()
                if not math.isfinite(p_no):
                    out[i] = Verdict("unsure", None, "the judge model gave no usable yes/no probability")
                    continue
                label = "hallucinated" if p_no >= self.threshold else "faithful"
                out[i] = Verdict(label, round(p_no, 4),
                                 f"judge model: P(no) = {p_no:.2f} against P(yes) = {1 - p_no:.2f} (of yes/no)")
            if progress:
                progress(min(start + self.batch_size, len(todo)), len(todo))
        return out  # type: ignore[return-value]


def get_class(name: str) -> type[Judge]:
    if name not in _REGISTRY:
        raise UserError(f"unknown judge {name!r}", hint=f"judges: {', '.join(names())}")
    return _REGISTRY[name]
