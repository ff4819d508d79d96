"""Every reader rounds has, driven with generated malformed input (the short CI profile of
``bench/fuzz_readers.py``): each case is refused with a clear UserError or read tolerantly,
never an internal error. ``ROUNDS_FUZZ_EXAMPLES`` sets the cases a reader (default 300)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fuzz_readers  # noqa: E402

EXAMPLES = int(os.environ.get("ROUNDS_FUZZ_EXAMPLES", "300"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUNDS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROUNDS_DEBUG", "1")


@pytest.mark.parametrize("name", sorted(fuzz_readers.READERS))
def test_reader_never_fails_with_an_internal_error(name):
    reader = fuzz_readers.READERS[name]

    @settings(max_examples=EXAMPLES, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(reader.strategy)
    def case(value):
        assert fuzz_readers.run_case(reader, value) in ("refused", "read")

    case()


def test_the_bench_counts_an_internal_error():
    """The harness can fail: a reader with a bug on some inputs is counted, with the case shown."""
    def buggy(value, work):
        if b"\n" in value:
            raise TypeError("a bug")
        return "read"

    reader = fuzz_readers.Reader("buggy", "a reader with a bug", st.binary(max_size=20), buggy)
    result = fuzz_readers.fuzz(reader, cases=200)
    assert result["cases"] == 200
    assert result["internal error"] > 0 and result["read"] > 0
    assert "TypeError: a bug" in result["examples"][0]
