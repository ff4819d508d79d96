"""The supervisor of a multi-process run (``--launcher accelerate``): one process that starts
every rank through ``accelerate launch`` and makes sure the session ends with the truth. When
a rank runs out of memory (it writes ``requests/oom.json`` and exits), every rank is relaunched
with half the micro-batch from the last checkpoint; when a rank dies, the launcher stops the
others and the session is marked failed, naming the rank."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from engine.recipe import TrainSpec
from engine.run.common import halve_micro_batch, oom_advice
from engine.session import SessionWriter, read_session_json
from engine.session.requests import take_smaller_batch_request


def launcher_command(spec: TrainSpec, session: Path) -> list[str]:
    """`accelerate launch` with one process per rank, each running ``engine.run.rank SESSION``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if spec.accelerate_config:
        cmd += ["--config_file", spec.accelerate_config]
        if spec.num_processes > 1:
            cmd += ["--num_processes", str(spec.num_processes)]
    else:
        # torchrun-style ranks on one machine; on a CPU the trainer's use_cpu picks the gloo backend
        cmd += ["--multi_gpu", "--num_processes", str(max(1, spec.num_processes)), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + ["-m", "engine.run.rank", str(session)]


def _failed_rank(log_tail: str) -> tuple[int | None, str]:
    """The first failed rank and why, from torch.distributed.elastic's failure summary."""
    block = log_tail[log_tail.rfind("Root Cause"):] if "Root Cause" in log_tail else log_tail
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
    sig = re.search(r"Signal (\d+) \((\w+)\)", block)
    why = (f"killed by {sig.group(2)}" if sig else f"exit code {code.group(1)}" if code else "exited")
    return (int(rank.group(1)) if rank else None), why


def supervise(session: Path) -> int:
    stopping = {"signal": None}
    proc_box: dict = {}

    def forward(signum, frame):  # the launcher passes it on to every rank
        stopping["signal"] = signum
        proc = proc_box.get("proc")
        if proc is not None:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    while True:
        spec = TrainSpec.from_json(read_session_json(session)["config"])
        cmd = launcher_command(spec, session)
        with SessionWriter.reopen(session) as writer:
            writer.update(world_size=spec.num_processes, launcher_command=cmd, supervisor_pid=os.getpid())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROUNDS_WORLD_SIZE": str(spec.num_processes)}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        proc_box["proc"] = proc
        tail: list[str] = []
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            tail = (tail + [raw.decode(errors="replace")])[-400:]
        code = proc.wait()
        status = read_session_json(session).get("status")
        if status == "finished" and code == 0:
            return 0
        if status == "stopped":
            return 0  # the ranks stopped as asked (the launcher may report the signal it got)
        oom = take_smaller_batch_request(session)
        if oom is not None and stopping["signal"] is None:
            if _relaunch_after_oom(session, oom):
                continue
            return 1
        break
    rank, why = _failed_rank("".join(tail))
    if status == "failed" and rank in (0, None):
        return code or 1  # rank 0 failed and said why itself
    reason = (f"rank {rank} {why}" if rank is not None else f"the launcher exited with code {code}") + \
        "; the other ranks were stopped by the launcher"
    with SessionWriter.reopen(session) as writer:  # rank 0's latest session.json, plus the failure
        writer.fail(reason, failed_rank=rank)
    print(f"rounds: run failed: {reason}", flush=True)
    return code or 1


def _relaunch_after_oom(session: Path, info: dict) -> bool:
    """Halve the micro-batch in the session's config for the next launch; False when it cannot be."""
    with SessionWriter.reopen(session) as writer:
        spec = TrainSpec.from_json(writer.meta["config"])
        new = halve_micro_batch(writer, spec, info.get("step"), str(info.get("error", "")), rank=info.get("rank"))
        if new is None:
            msg = f"out of memory on rank {info.get('rank', '?')} at micro-batch {spec.batch} ({info.get('error', '')})"
            writer.fail(msg, failed_rank=info.get("rank"))
            print(f"rounds: error: {msg}\n  hint: {oom_advice(spec)}", flush=True)
            return False
    print(f"rounds: out of memory on rank {info.get('rank', '?')} at step {info.get('step')}; relaunching every "
          f"rank with micro-batch {spec.batch} -> {new.batch}, gradient accumulation {spec.grad_accum} -> "
          f"{new.grad_accum}", flush=True)
    return True
