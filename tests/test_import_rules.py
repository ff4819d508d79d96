"""The import rules: engine never imports textual; console never imports the training stack at start-up."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

HEAVY = ["torch", "transformers", "trl", "peft", "bitsandbytes"]

PROBE = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module({pkg!r})
names = [pkg.__name__]
for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    importlib.import_module(m.name)
    names.append(m.name)
print(json.dumps({{"modules": names, "loaded": sorted(k for k in sys.modules if k.split(".")[0] in {banned!r})}}))
"""


def _probe(pkg: str, banned: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(pkg=pkg, banned=banned)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_engine_never_imports_textual():
    result = _probe("engine", ["textual", "rich"])
    assert "engine.session" in result["modules"] and "engine.data" in result["modules"]
    assert result["loaded"] == []


def test_console_does_not_import_training_stack():
    result = _probe("console", HEAVY)
    assert "console.cli" in result["modules"]
    assert result["loaded"] == []


def test_probe_can_see_a_violation():
    # The probe itself must be able to fail: engine.tinymodel's builder does import torch.
    out = subprocess.run([sys.executable, "-c",
                          "import sys, engine.tinymodel as t; t.train_tokenizer(64); "
                          "print('transformers' in sys.modules)"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_engine_never_imports_console_even_lazily():
    """The engine is headless: not even a function-level import of the console (AST, every file)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n == "console" or n.startswith("console.")]
    assert offenders == []
