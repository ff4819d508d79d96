from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real tiny Hugging Face model folder, built once per test run."""
    from engine.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)


def run_rounds(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    """Run the real `rounds` entry point in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ROUNDS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    """The predicate's first true value, polled; fails after a generous ``timeout`` (never a short one)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
