"""Stages as data: a stage registered here, in a test module, is planned, trained (tiny model) and
shown in the Monitor without any change to rounds' own modules; and no module outside
engine/stages branches on a stage's name."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from echo_stage import EchoStage

from conftest import ROOT
from engine import stages
from engine.session import EventTail, read_session_json
from engine.stages import Stage, register

DEMO = ROOT / "engine" / "demo_data"


@pytest.fixture
def echo_stage():
    register(EchoStage)  # tests/echo_stage.py registers it when imported; again here after an unregister
    yield stages.get("echo")
    stages.unregister("echo")


def test_registry_and_protocol(echo_stage):
    assert stages.names()[:3] == ["sft", "dpo", "kto"] and "echo" in stages.names()
    assert stages.all_options()["echo_gain"][1] == ["echo"]
    assert stages.all_options()["beta"][1] == ["dpo", "kto"]  # one flag, two stages
    described = echo_stage.describe()
    assert described["module"] == "echo_stage" and Path(described["file"]) == ROOT / "tests" / "echo_stage.py"
    assert described["charts"] == [["echo", ["echo/gain_loss", "loss"]]]
    with pytest.raises(ValueError, match="learning rate"):
        register(type("NoLR", (Stage,), {"name": "nolr", "data_kind": "sft"}))
    with pytest.raises(Exception, match="unknown stage 'nope'"):
        stages.get("nope")


def test_the_planner_reads_the_stages_factors(echo_stage):
    from engine import plan as pl
    from engine.shapes import ModelShape, read_config

    shape = ModelShape.from_config(read_config(str(ROOT / "tests" / "fixtures" / "configs" / "llama-2-7b.json")))
    device = pl.cuda_device(24 * 2**30, flops=1e14)

    def peak(stage: str) -> dict:
        w = pl.Workload(stage, 1024, 1, 100, lengths=[1024] * 4)  # all one length: no padding, no mask
        r = pl.strategy_result(shape, pl.Strategy("lora", False, False, 1), w, device)
        return r.components

    one, echo = peak("kto"), peak("echo")  # KTO trains one sequence an example, without adapter dropout
    assert echo["activations"] == pytest.approx(3 * one["activations"], rel=1e-6)  # three sequences an example
    assert echo["reference_weights"] == 0 and peak("sft")["activations"] > one["activations"]  # SFT's dropout
    # KTO: micro-batches start at 2, a reference (a full plan keeps a copy unless precomputed)
    kto = pl.plan(shape, pl.Workload("kto", 512, 1, 100), device)
    assert min(r.strategy.micro_batch for r in kto.strategies) == 2
    assert {r.strategy.precompute_ref for r in kto.strategies} == {False, True}
    full = next(r for r in kto.strategies if r.strategy.plan == "full" and not r.strategy.precompute_ref)
    assert full.components["reference_weights"] == full.components["policy_weights"]
    assert {r.strategy.precompute_ref for r in pl.plan(shape, pl.Workload("sft", 512, 1, 100), device).strategies} \
        == {False}


def test_a_fourth_stage_is_planned_trained_and_monitored(echo_stage, tiny_model, tmp_path):
    from engine.recipe import TrainSpec
    from engine.run.launch import start

    spec = TrainSpec(stage="echo", model=str(tiny_model), data=str(DEMO / "sft_train.jsonl"), max_steps=3,
                     batch=2, options={"echo_gain": 3.0}, device="cpu", system_interval=0.5, save_steps=100)
    writer, proc = start(spec, tmp_path / "sessions", name="echo-run")
    assert proc.wait(timeout=600) == 0, (writer.path / "run.log").read_text()[-3000:]
    meta = read_session_json(writer.path)
    assert meta["status"] == "finished" and meta["stage"] == "echo"
    assert meta["plan"]["chosen_by"] == "auto" and meta["plan"]["predicted_peak_bytes"] > 0  # planned
    assert meta["config"]["stage_origin"]["module"] == "echo_stage"  # how the worker found the stage's module
    assert spec.plan == "auto"  # resolving the plan made a new spec; the caller's is unchanged
    records = list(EventTail(writer.path / "events.jsonl"))
    ms = [r for r in records if r["type"] == "metrics"]
    assert [m["step"] for m in ms] == [1, 2, 3]
    assert all(m["echo/gain_loss"] == pytest.approx(3.0 * m["loss"]) for m in ms)  # its option reached it
    log = (writer.path / "run.log").read_text()
    assert re.search(r"step 3/3 .*echo \d", log)  # its own metric on the progress line
    assert (writer.path / "adapter" / "adapter_model.safetensors").is_file() or \
        (writer.path / "model" / "model.safetensors").is_file()


async def test_the_monitor_shows_a_stages_own_charts(echo_stage, tmp_path):
    """The Monitor reads the stage's charts from session.json (stage_info): no import of the stage."""
    from console.app import RoundsApp
    from engine.session import SessionWriter

    w = SessionWriter.create(tmp_path, "train", name="echo-view", stage="echo")
    w.update(plan={"name": "lora"}, stage_info=echo_stage.describe())
    for step in range(1, 6):
        w.event("metrics", step=step, max_steps=5, loss=1.0 / step, **{"echo/gain_loss": 3.0 / step})
    w.set_status("finished")
    w.close()
    stages.unregister("echo")  # the console must not need the stage's code
    app = RoundsApp(tmp_path, w.path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: getattr(screen, "loaded", False))
        await pilot.press("2")
        await pilot.pause()
        chart = str(screen.query_one("#chart0").render())
        assert "echo gain x loss" in chart and "0.6" in chart  # its label, its last value (3/5)
        await pilot.press("tab")
        await pilot.pause()
        assert "tokens/s" in str(screen.query_one("#chart0").render())  # then the common charts


async def wait_until(pilot, predicate, timeout: float = 60):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        await pilot.pause(0.1)


def test_no_stage_branches_outside_the_stage_modules():
    """`grep -rn 'stage == ' engine console` finds nothing outside engine/stages/."""
    offenders = []
    for folder in ("engine", "console"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.parent.name == "stages" and path.parent.parent.name == "engine":
                continue
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                if re.search(r"stage\s*[!=]=\s*|stage in \(", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_rounds_plan_takes_a_registered_stage_and_its_data_kind(echo_stage, tiny_model, capsys):
    """`rounds plan --stage NAME --data FILE` reads the file as the stage's kind (echo trains on SFT data)."""
    from console.cli import main

    code = main(["plan", "--model", str(tiny_model), "--stage", "echo", "--data", str(DEMO / "sft_train.jsonl"),
                 "--device", "cpu", "--batch", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "ECHO on" in out and "questions x 1 epoch" in out and "rounds train echo --plan" in out
