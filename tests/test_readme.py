"""The README's commands are the ones CI and users run: keep them true."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_the_walkthrough_runs_as_written_in_a_fresh_clone(tmp_path):
    """Every command of the README's walkthrough, in order, in a folder laid out as a fresh clone
    (its marked sessions/ folder, the bundled data; no models/, no data/): each must succeed."""
    import os
    import subprocess
    import sys

    block = re.search(r"## Walkthrough: the loop by hand.*?```bash\n(.*?)```", README, re.S).group(1)
    clone = tmp_path / "clone"
    (clone / "sessions").mkdir(parents=True)
    (clone / "sessions" / ".rounds-sessions").write_text((ROOT / "sessions" / ".rounds-sessions").read_text())
    (clone / "engine").symlink_to(ROOT / "engine")  # engine/demo_data/... as the README names it
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "XDG_DATA_HOME": str(tmp_path / "xdg"), "TQDM_DISABLE": "1"}
    env.pop("ROUNDS_SESSIONS", None)
    script = clone / "walkthrough.sh"
    script.write_text("set -euxo pipefail\n" + block)
    r = subprocess.run(["bash", str(script)], cwd=clone, env=env, capture_output=True, text=True, timeout=1800,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "rounds: finished at step 10" in r.stdout, r.stdout[-3000:]  # the DPO run on the round's pairs
    made = sorted(p.name.split("-", 2)[2] for p in (clone / "sessions").iterdir() if p.is_dir())
    assert {"eval-walk-eval", "eval-walk-eval-dpo", "train-walk-dpo", "train-walk-sft"} <= set(made), made
    assert not (tmp_path / "xdg").exists()  # everything went into the clone's own sessions/
