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
