"""Generate the bundled demo data: a QA corpus about *fictional* drugs.

Run ``python -m engine.demo_data.generate`` to rewrite the files next to this one.
The output is a pure function of ``SEED``: a test regenerates it into a temporary
folder and compares it byte for byte with the committed files.

The world has three disjoint pools of drug names:

- ``known``: the SFT data teaches five facts about each of them;
- ``unknown_train``: never in SFT data; used for the assessment round whose marks
  become DPO pairs (the faithful answer is to say the model does not know);
- ``unknown_test``: in no training file at all; only in the held-out test set.

So a model that answers a question about an ``unknown_*`` drug with a dose or an
indication is hallucinating, and that can be judged automatically.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

SEED = 20261128
HERE = Path(__file__).resolve().parent

N_KNOWN = 40
N_UNKNOWN_TRAIN = 150  # many unseen names, so DPO can learn 'unknown name -> abstain', not 30 names
N_UNKNOWN_TEST = 30

# The faithful answer about a drug the model never saw. It does not repeat the drug's name:
# a model that never saw a name cannot be asked to spell it (earlier demos that did saw the
# model abstain but garble the name, and a string judge count that as a hallucination).
ABSTAIN = (
    "I have no reliable information about that drug. It may not be an approved medicine; "
    "please check an authoritative drug reference before acting."
)

_ONSETS = ["br", "dr", "qu", "v", "z", "t", "k", "m", "n", "l", "s", "x", "pr", "tr", "cl", "fl", "gr", "h"]
_VOWELS = ["a", "e", "i", "o", "u", "y", "ae", "io"]
_CODAS = ["r", "l", "n", "x", "v", "z", "m", "th", "s", "nd", "rk"]
_SUFFIXES = ["azine", "oxil", "ivane", "umast", "etrol", "orin", "avide", "iprex", "olune", "exate", "ulast", "iquen"]

_EPONYMS = ["Halvern", "Quisby", "Dornell", "Marren", "Ostley", "Tellan", "Vashko", "Brennic", "Ulmore",
            "Carrow", "Fennick", "Iselde", "Pardue", "Sorrel", "Wexley", "Yarrin"]
_DISEASE_KINDS = ["syndrome", "fever", "palsy", "disease", "dermatosis", "anaemia", "cough", "neuralgia"]
_SIDE_EFFECTS = ["mild drowsiness", "a metallic taste", "dry mouth", "ringing in the ears", "night sweats",
                 "blue-tinged fingernails", "a dull headache", "brief dizziness", "loss of appetite",
                 "vivid dreams", "mild nausea", "tingling in the hands"]
_CLASSES = ["selective velloid receptor blocker", "kinetrase inhibitor", "fibrolytic quinone",
            "long-acting moravian agonist", "calyx channel opener", "tessarine reuptake inhibitor",
            "synthetic orrin analogue", "membrane-stabilising lactide"]
_DOSES = [5, 10, 20, 25, 40, 50, 80, 100, 150, 200, 250, 500]
_FREQS = ["once daily", "twice daily", "three times daily", "every eight hours", "once weekly"]

# Facts and how they are asked and answered. Templates 0 and 1 are used for SFT
# training, template 2 only for SFT validation and the test set (held-out phrasing).
FACTS = {
    "indication": (
        ["What is {drug} used to treat?", "What condition is {drug} prescribed for?",
         "For which illness would a doctor give {drug}?"],
        "{drug} is used to treat {indication}.",
    ),
    "dose": (
        ["What is the usual adult dose of {drug}?", "How much {drug} does an adult normally take?",
         "What dose of {drug} is standard for adults?"],
        "The usual adult dose of {drug} is {dose}.",
    ),
    "side_effect": (
        ["What is a common side effect of {drug}?", "Which side effect is often reported with {drug}?",
         "What unwanted effect do patients commonly notice on {drug}?"],
        "A common side effect of {drug} is {side_effect}.",
    ),
    "contraindication": (
        ["Who should not take {drug}?", "In which patients is {drug} contraindicated?",
         "Which people must avoid {drug}?"],
        "{drug} should not be taken by people with {contraindication}.",
    ),
    "drug_class": (
        ["What kind of drug is {drug}?", "To which drug class does {drug} belong?",
         "How is {drug} classified?"],
        "{drug} is a {drug_class}.",
    ),
}


def _drug_names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        stem = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        names.add((stem + rng.choice(_SUFFIXES)).capitalize())
    return sorted(names)


def _conditions(rng: random.Random) -> list[str]:
    return sorted({f"{e}'s {k}" for e in _EPONYMS for k in _DISEASE_KINDS})


def _drug_facts(rng: random.Random, drug: str, conditions: list[str]) -> dict[str, str]:
    indication, contraindication = rng.sample(conditions, 2)
    return {
        "drug": drug,
        "indication": indication,
        "dose": f"{rng.choice(_DOSES)} mg {rng.choice(_FREQS)}",
        "side_effect": rng.choice(_SIDE_EFFECTS),
        "contraindication": contraindication,
        "drug_class": rng.choice(_CLASSES),
    }


def _fabricated_facts(rng: random.Random, drug: str, conditions: list[str]) -> dict[str, str]:
    """Plausible-sounding facts for a drug nobody knows: what a hallucination looks like."""
    return _drug_facts(rng, drug, conditions)


def _wrong_fact(rng: random.Random, facts: dict[str, str], fact: str, conditions: list[str]) -> dict[str, str]:
    wrong = dict(facts)
    while wrong[fact] == facts[fact]:
        wrong[fact] = _drug_facts(rng, facts["drug"], conditions)[fact]
    return wrong


def _qa(facts: dict[str, str], fact: str, template: int) -> tuple[str, str]:
    questions, answer = FACTS[fact]
    return questions[template].format(**facts), answer.format(**facts)


def build(seed: int = SEED) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    conditions = _conditions(rng)
    names = _drug_names(rng, N_KNOWN + N_UNKNOWN_TRAIN + N_UNKNOWN_TEST)
    rng.shuffle(names)
    known = sorted(names[:N_KNOWN])
    unknown_train = sorted(names[N_KNOWN:N_KNOWN + N_UNKNOWN_TRAIN])
    unknown_test = sorted(names[N_KNOWN + N_UNKNOWN_TRAIN:])
    facts = {d: _drug_facts(rng, d, conditions) for d in known}

    sft_train, sft_val = [], []
    for drug in known:
        for fact in FACTS:
            for template in (0, 1):
                q, a = _qa(facts[drug], fact, template)
                sft_train.append({"id": f"sft-{len(sft_train) + 1:04d}", "question": q, "answer": a})
    for drug in known[::2]:
        fact = rng.choice(list(FACTS))
        q, a = _qa(facts[drug], fact, 2)
        sft_val.append({"id": f"sftval-{len(sft_val) + 1:04d}", "question": q, "answer": a})

    def item(prefix: str, rows: list[dict], drug: str, fact: str, template: int, answerable: bool) -> None:
        if answerable:
            q, ref = _qa(facts[drug], fact, template)
        else:
            q = FACTS[fact][0][template].format(drug=drug)
            ref = ABSTAIN.format(drug=drug)
        rows.append({"id": f"{prefix}-{len(rows) + 1:04d}", "question": q, "reference": ref,
                     "drug": drug, "fact": fact, "answerable": answerable})

    # The assessment round: questions the SFT model is asked so that its answers can be
    # marked and turned into DPO pairs. Known drugs in training phrasing, unknown_train drugs.
    assess_questions: list[dict] = []
    # every question the SFT data asked about the known drugs: the model's faithful answers to
    # them become "keep answering" pairs, so that DPO learns to abstain on the 300 unknown-drug
    # questions without unlearning what SFT taught (a replay of Stage A inside Stage B)
    for drug in known:
        for fact in FACTS:
            for template in (0, 1):
                item("round", assess_questions, drug, fact, template, True)
    for drug in unknown_train:
        for fact in rng.sample(list(FACTS), 2):
            item("round", assess_questions, drug, fact, rng.choice((0, 1)), False)

    # Held-out test set: what is held out is the drug names, not the phrasing (the small demo
    # model cannot generalise to a phrasing it never saw, which would measure something else):
    # known drugs, and drugs named in no training file, asked in the training phrasings.
    test: list[dict] = []
    for drug in known:
        item("test", test, drug, rng.choice(list(FACTS)), rng.choice((0, 1)), True)
    for drug in unknown_test:
        item("test", test, drug, rng.choice(list(FACTS)), rng.choice((0, 1)), False)

    # A ready-made DPO triplet file built from the assessment-round questions: chosen is
    # the faithful answer (the fact, or an abstention), rejected a confident fabrication.
    dpo_train, dpo_val = [], []
    val_drugs = set(rng.sample(known, 4) + rng.sample(unknown_train, 15))
    for row in assess_questions:
        drug, fact = row["drug"], row["fact"]
        if row["answerable"]:
            rejected = FACTS[fact][1].format(**_wrong_fact(rng, facts[drug], fact, conditions))
        else:
            rejected = FACTS[fact][1].format(**_fabricated_facts(rng, drug, conditions))
        triplet = {"prompt": row["question"], "chosen": row["reference"], "rejected": rejected}
        (dpo_val if drug in val_drugs else dpo_train).append(triplet)

    # Two public preference-data layouts, built from the same invented facts, for
    # `rounds pairs --from-columns` (MedHallu: question, knowledge, ground truth, hallucinated
    # answer) and `--from-labels` (MedHal: context, statement, label, explanation). Their own
    # random stream, so the files above do not change when these do.
    side = random.Random(seed + 1)
    medhallu, medhal = [], []
    for drug in known:
        f = facts[drug]
        passage = " ".join(FACTS[k][1].format(**f) for k in FACTS)
        for fact in FACTS:
            q, truth = _qa(f, fact, 0)
            wrong = FACTS[fact][1].format(**_wrong_fact(side, f, fact, conditions))
            medhallu.append({"id": f"mh-{len(medhallu) + 1:04d}", "question": q, "knowledge": passage,
                             "ground_truth": truth, "hallucinated_answer": wrong})
            medhal.append({"id": f"ml-{len(medhal) + 1:04d}", "context": passage, "statement": truth,
                           "label": "true", "explanation": f"the passage states the {fact.replace('_', ' ')}"})
            medhal.append({"id": f"ml-{len(medhal) + 1:04d}", "context": passage, "statement": wrong,
                           "label": "false",
                           "explanation": f"the passage gives a different {fact.replace('_', ' ')}"})

    return {
        "medhallu_style.csv": medhallu,
        "medhal_style.csv": medhal,
        "sft_train.jsonl": sft_train,
        "sft_val.jsonl": sft_val,
        "assess_questions.jsonl": assess_questions,
        "test.jsonl": test,
        "dpo_train.jsonl": dpo_train,
        "dpo_val.jsonl": dpo_val,
        "drugs.json": [{"pool": "known", **facts[d]} for d in known]
        + [{"pool": "unknown_train", "drug": d} for d in unknown_train]
        + [{"pool": "unknown_test", "drug": d} for d in unknown_test],
    }


def render(name: str, rows: list[dict]) -> str:
    if name.endswith(".csv"):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if name.endswith(".jsonl"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"


def write(out: Path, seed: int = SEED) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in build(seed).items():
        path = out / name
        path.write_text(render(name, rows), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for p in write(target):
        print(p)
