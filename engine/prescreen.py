"""Pre-screen flags: hints that order and highlight items for a person — never a verdict.

For each answer: numbers (doses, units) and capitalised or drug-like terms that appear
nowhere in the reference, context or question; empty, truncated (hit max tokens) or
repetitive answers; the answer/reference length ratio.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s*(mg|mcg|µg|g|kg|ml|mL|l|%|iu|IU|units?|mmol|hours?|h|days?|"
                     r"weeks?|times)?\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
# Word endings of real drug names: stems of the WHO's International Nonproprietary Names
# (-mab antibodies, -nib kinase inhibitors, -pril ACE inhibitors, ...). General pharmacology,
# not any one data set's vocabulary.
_INN_STEMS = ("mab", "nib", "vir", "pril", "sartan", "olol", "alol", "statin", "azole", "cillin", "mycin", "micin",
              "cycline", "dipine", "prazole", "tide", "parin", "oxacin", "floxacin", "azepam", "azolam",
              "caine", "coxib", "dronate", "fibrate", "gliptin", "gliflozin", "glitazone", "lukast", "mustine",
              "nidazole", "oxetine", "platin", "profen", "setron", "isone", "olone", "tadine", "terol", "tinib",
              "triptan", "vastatin", "zepam", "zosin", "tidine", "semide", "thiazide", "conazole", "afil", "plase",
              "cept", "kinra", "parib", "rafenib", "ciclib", "relin", "asone", "dopa", "ergine", "phylline",
              "pramine", "triptyline", "peridol", "apine", "azepine", "codone", "adol", "perazine", "promazine")
_DRUGLIKE = re.compile(r"(?i)[a-z]{3,}(" + "|".join(sorted(_INN_STEMS, key=len, reverse=True)) + r")$")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([A-Z][a-z]+)")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").lower()


def numbers(text: str) -> list[str]:
    out = []
    for m in _NUMBER.finditer(text or ""):
        out.append(f"{m.group(1)} {m.group(2)}".strip() if m.group(2) else m.group(1))
    return out


def terms(text: str) -> list[str]:
    """Capitalised words not opening a sentence, and drug-like words, as they appear."""
    text = text or ""
    starts = {m.start(2) for m in _SENTENCE_START.finditer(text)}
    out = []
    for m in _WORD.finditer(text):
        w = m.group(0)
        if (w[0].isupper() and m.start() not in starts and len(w) > 2) or _DRUGLIKE.search(w):
            out.append(w)
    return out


def repetitive(text: str) -> bool:
    words = _norm(text).split()
    if len(words) < 12:
        return False
    grams = [" ".join(words[i:i + 3]) for i in range(len(words) - 2)]
    most = max(grams.count(g) for g in set(grams))
    return most >= 3 or len(set(words)) / len(words) < 0.4


def flags(answer: str, reference: str = "", context: str = "", question: str = "",
          truncated: bool = False) -> dict:
    source = _norm(" ".join([reference or "", context or "", question or ""]))
    source_numbers = {n.split()[0] for n in numbers(source)}
    absent_numbers = [n for n in dict.fromkeys(numbers(answer)) if n.split()[0] not in source_numbers]
    absent_terms = [t for t in dict.fromkeys(terms(answer)) if t.lower() not in source]
    ref_words = max(1, len((reference or "").split()))
    out = {
        "numbers_absent": absent_numbers,
        "terms_absent": absent_terms,
        "empty": not (answer or "").strip(),
        "truncated": bool(truncated),
        "repetitive": repetitive(answer),
        "length_ratio": round(len((answer or "").split()) / ref_words, 2),
    }
    out["count"] = (len(absent_numbers) + len(absent_terms) + out["empty"] + out["truncated"] + out["repetitive"]
                    + (out["length_ratio"] > 3 or (out["length_ratio"] < 0.25 and not out["empty"])))
    return out
