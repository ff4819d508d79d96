"""Text normalisation shared by judges, pairs and comparisons (one definition, one behaviour)."""

from __future__ import annotations

import hashlib


def normalise(text: str | None) -> str:
    """Lower case, every run of white space one space, end punctuation and quotes stripped:
    'The dose is 5 mg.' and ' the dose  is 5 mg' are the same text."""
    text = " ".join((text or "").lower().split())
    return text.strip(" .!?;:,\"'")


def fingerprint(question: str) -> str:
    """A question's identity across sessions and pair files (its normalised text, hashed): what
    `compare` checks against the questions used for training pairs."""
    return hashlib.sha256(normalise(question).encode()).hexdigest()[:16]
