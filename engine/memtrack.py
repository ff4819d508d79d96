"""Measure memory the way the planner predicts it: live tensor bytes, by device-independent count.

``LiveTensorBytes`` is a ``TorchDispatchMode`` that sees every tensor an operator
returns (forward, backward and optimizer steps alike), counts the bytes of each
storage once while any tensor on it lives (weakref-finalized), and keeps the peak.
Unlike ``torch.distributed._tools.mem_tracker.MemTracker`` it does not refuse a
module called twice in one step (DPO's reference pass), and it works on CPU.

Tensors that exist before the mode starts (the loaded weights) are counted with
``static_bytes(modules)``; ``peak_bytes`` is then static + the peak of what the mode saw.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _storage_key(t: torch.Tensor) -> tuple[int, str] | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if st.nbytes() == 0:
        return None
    return (st.data_ptr(), str(t.device))


def static_bytes(*modules: torch.nn.Module | None) -> int:
    """Bytes of the unique storages behind the parameters and buffers of ``modules``."""
    seen: dict[tuple[int, str], int] = {}
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            key = _storage_key(t)
            if key is not None:
                seen[key] = t.untyped_storage().nbytes()
    return sum(seen.values())


class LiveTensorBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[tuple[int, str], list[int]] = {}  # key -> [nbytes, tensors alive]
        self._seen: set[int] = set()  # ids of live tensors already counted (tensors can't be hashed by value)
        self._excluded: set[tuple[int, str]] = set()

    def exclude(self, *modules: torch.nn.Module | None) -> LiveTensorBytes:
        """Do not count views of these modules' weights: ``static_bytes`` already does."""
        for m in modules:
            if m is None:
                continue
            for t in list(m.parameters()) + list(m.buffers()):
                key = _storage_key(t)
                if key is not None:
                    self._excluded.add(key)
        return self

    def _release(self, key: tuple[int, str], tid: int) -> None:
        self._seen.discard(tid)
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.live -= entry[0]
            del self._storages[key]

    def _track(self, t: torch.Tensor) -> None:
        if id(t) in self._seen:
            return
        key = _storage_key(t)
        if key is None or key in self._excluded:
            return
        self._seen.add(id(t))
        entry = self._storages.get(key)
        if entry is None:
            nbytes = t.untyped_storage().nbytes()
            self._storages[key] = [nbytes, 1]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[1] += 1
        weakref.finalize(t, self._release, key, id(t))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def reset_peak(self) -> None:
        self.peak = self.live
