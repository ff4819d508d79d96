"""One probe for the machine: GPUs through NVML, this process through psutil and torch.

Like nvitop's data layer: a value that cannot be read is simply absent from the sample
(``None`` where a field must exist), never an exception, so no caller needs a special
case for "no GPU". It does not import torch: it reads torch's allocator only when the
process already uses torch, so the console can use the same probe.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import psutil

from engine.session.layout import SYSTEM

NA = None  # what a field that could not be read holds (JSON null)


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no GPU: all the same to us
        return None


class SystemProbe:
    def __init__(self) -> None:
        self._nvml = _nvml()
        self._handles: list[Any] = []
        if self._nvml is not None:
            try:
                count = self._nvml.nvmlDeviceGetCount()
                self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except Exception:
                self._handles = []
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # prime: the first reading is always 0
        psutil.cpu_percent(None)

    @property
    def gpu_count(self) -> int:
        return len(self._handles)

    def _read(self, fn, *args):
        try:
            return fn(*args)
        except Exception:
            return NA

    def gpus(self) -> list[dict]:
        out = []
        nv = self._nvml
        for i, h in enumerate(self._handles):
            gpu: dict[str, Any] = {"index": i}
            name = self._read(nv.nvmlDeviceGetName, h)
            if name is not None:
                gpu["name"] = name.decode() if isinstance(name, bytes) else name
            mem = self._read(nv.nvmlDeviceGetMemoryInfo, h)
            if mem is not None:
                gpu["mem_used"], gpu["mem_total"] = int(mem.used), int(mem.total)
            util = self._read(nv.nvmlDeviceGetUtilizationRates, h)
            if util is not None:
                gpu["util"] = util.gpu
            temp = self._read(nv.nvmlDeviceGetTemperature, h, 0)  # 0: NVML_TEMPERATURE_GPU
            if temp is not None:
                gpu["temp_c"] = temp
            power = self._read(nv.nvmlDeviceGetPowerUsage, h)
            if power is not None:
                gpu["power_w"] = round(power / 1000, 1)
            limit = self._read(nv.nvmlDeviceGetEnforcedPowerLimit, h)
            if limit is not None:
                gpu["power_limit_w"] = round(limit / 1000, 1)
            out.append(gpu)
        return out

    def torch_memory(self) -> dict | None:
        torch = sys.modules.get("torch")
        if torch is None:
            return NA
        try:
            if not torch.cuda.is_available() or not torch.cuda.is_initialized():
                return NA
            dev = torch.cuda.current_device()
            return {
                "device": dev,
                "allocated": int(torch.cuda.memory_allocated(dev)),
                "reserved": int(torch.cuda.memory_reserved(dev)),
                "peak": int(torch.cuda.max_memory_allocated(dev)),
            }
        except Exception:
            return NA

    def process(self) -> dict:
        p = self._process
        out: dict[str, Any] = {"pid": p.pid}
        try:
            with p.oneshot():
                out["rss"] = int(p.memory_info().rss)
                out["cpu_percent"] = p.cpu_percent(None)
                out["threads"] = p.num_threads()
            children = p.children(recursive=True)
            out["rss_children"] = int(sum(self._read(lambda c: c.memory_info().rss, c) or 0 for c in children))
        except psutil.Error:
            pass
        return out

    def host(self) -> dict:
        vm = psutil.virtual_memory()
        return {"ram_used": int(vm.total - vm.available), "ram_total": int(vm.total),
                "cpu_percent": psutil.cpu_percent(None), "cpus": os.cpu_count()}

    def sample(self) -> dict:
        s: dict[str, Any] = {"gpus": self.gpus(), "process": self.process(), "host": self.host()}
        mem = self.torch_memory()
        if mem is not None:
            s["torch"] = mem
        return s


class SystemSampler:
    """A daemon thread that writes a ``system`` event every ``interval`` seconds."""

    def __init__(self, writer, interval: float = 2.0, probe: SystemProbe | None = None, extra: dict | None = None):
        self.writer = writer
        self.interval = interval
        self.probe = probe or SystemProbe()
        self.extra = extra or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rounds-system-sampler", daemon=True)
        self.samples = 0

    def start(self) -> SystemSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                self.writer.event(SYSTEM, **self.extra, **self.probe.sample())
                self.samples += 1
            except Exception:  # telemetry must never kill a run
                pass
            self._stop.wait(max(0.05, self.interval - (time.perf_counter() - t)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
