"""engine.heap: a CPU training process keeps freed memory in its heap instead of mapping every large
tensor afresh. Counted in page faults (the kernel's count of pages it zero-filled), not in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from engine import heap
from engine.errors import UserError

# 64 MiB tensors, over glibc's largest mmap threshold (32 MiB), allocated and freed five times, after ten
# to warm the heap up: torch asks for 64-byte alignment, so a freed block of exactly the size is a little
# short for the next request, and the heap grows until freed neighbours have merged into one that fits
FAULTS = """
import json, resource, sys
import torch
from engine.heap import keep_freed_memory, kept, restore
mode = keep_freed_memory() if sys.argv[1] in ("reuse", "restored", "probed") else "system"
if sys.argv[1] == "restored":  # glibc's defaults again before any large tensor: as if never changed
    restore()
if sys.argv[1] in ("probed", "probe-only"):  # the 4-bit probe, which measures under the training heap
    from engine.plan import q4_probe
    assert q4_probe(), "the 4-bit probe gave nothing"
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(16 * 2**20); del x
before = faults()
for _ in range(5):
    x = torch.ones(16 * 2**20); del x
print(json.dumps({"mode": mode, "faults": faults() - before, "kept": kept()}))
"""


def _faults(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(heap._mallopt() is None, reason="not glibc: there is no mallopt to call")
def test_freed_large_tensors_are_reused_not_mapped_afresh():
    system = _faults("system")
    reuse = _faults("reuse")
    pages = 5 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    # glibc's defaults: every 64 MiB tensor is a fresh mapping, each of its pages faulted in when filled
    assert system["mode"] == "system" and system["faults"] >= pages * 0.9
    # kept in the heap: the second and later tensors reuse the first one's pages
    assert reuse["mode"] == heap.REUSE and reuse["faults"] < pages * 0.1
    # restore(): glibc's defaults, every large tensor a fresh mapping again
    assert _faults("restored")["faults"] >= pages * 0.9


@pytest.mark.skipif(heap._mallopt() is None, reason="not glibc: there is no mallopt to call")
def test_the_4bit_probe_leaves_the_heap_as_it_found_it():
    """The probe dequantizes under the training heap, then puts glibc's defaults back, but only where it
    was the one that changed them: in a process that already kept freed memory (a training run that plans
    again) the heap stays as the run set it."""
    pages = 5 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    probed = _faults("probed")
    assert probed["kept"] and probed["faults"] < pages * 0.1
    # alone, it sets glibc's defaults back (the blocks it freed meanwhile may still serve the next requests)
    assert _faults("probe-only")["kept"] is False


@pytest.mark.skipif(heap._mallopt() is None, reason="not glibc: there is no mallopt to call")
def test_rounds_malloc_system_leaves_glibc_defaults():
    counts = _faults("reuse", ROUNDS_MALLOC="system")
    assert counts["mode"] == heap.SYSTEM
    assert counts["faults"] >= 5 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE") * 0.9


def test_a_bad_rounds_malloc_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ROUNDS_MALLOC", "jemalloc")
    with pytest.raises(UserError) as e:
        heap.keep_freed_memory()
    assert e.value.field == "ROUNDS_MALLOC" and "jemalloc" in e.value.message and "system" in e.value.hint
    monkeypatch.setenv("ROUNDS_MALLOC", " System ")
    assert heap.choice() == heap.SYSTEM
    monkeypatch.setenv("ROUNDS_MALLOC", "")
    assert heap.choice() == heap.REUSE


def test_a_cpu_runtime_records_its_heap(monkeypatch):
    from engine.recipe import TrainSpec, resolve_runtime

    monkeypatch.setenv("ROUNDS_MALLOC", "system")  # this test process keeps glibc's defaults
    spec = TrainSpec(stage="sft", model="m", data="d", device="cpu")
    assert resolve_runtime(spec).allocator == heap.SYSTEM
    monkeypatch.setenv("ROUNDS_MALLOC", "nonsense")
    with pytest.raises(UserError):
        resolve_runtime(spec)
