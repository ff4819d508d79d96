"""Text normalisation shared by judges, pairs and comparisons (one definition, one behaviour)."""

from __future__ import annotations


def normalise(text: str | None) -> str:
    """Lower case, every run of white space one space, end punctuation and quotes stripped:
    'The dose is 5 mg.' and ' the dose  is 5 mg' are the same text."""
    text = " ".join((text or "").lower().split())
    return text.strip(" .!?;:,\"'")
