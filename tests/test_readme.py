"""The README's commands are the ones CI and users run: keep them true."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _commands() -> list[str]:
    block = re.search(r"## Set-up: two commands.*?```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    cmds = _commands()
    assert len(cmds) == 2
    assert all(c.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0") for c in cmds)


def test_ci_runs_exactly_the_readme_test_command():
    test_cmd = _commands()[1].split(" && ")[-1]
    assert test_cmd == "python -m pytest"
    ci_lines = [line.strip() for line in CI.splitlines()]
    assert test_cmd in ci_lines
    assert "pip install -q torch==2.13.0" in ci_lines and "pip install -q -e '.[dev]'" in ci_lines


def test_readme_verbs_table_matches_the_cli():
    from console.cli import build_parser

    verbs = next(a for a in build_parser()._actions if a.dest == "verb").choices
    documented = set(re.findall(r"^\| `rounds ([a-z-]+)", README, re.M))
    assert documented == set(verbs)
