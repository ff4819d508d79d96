"""The C heap of a CPU training process: freed memory is kept for the next step instead of being
handed back to the operating system.

glibc's malloc serves every block over 32 MiB (the most its mmap threshold can be) with a fresh
``mmap`` and returns it with ``munmap`` when freed. On the CPU a training step allocates such blocks
over and over (a micro-batch's logits, a layer's MLP activations, a 4-bit weight's dequantized copy),
so every step the kernel maps them afresh and zero-fills each page on its first touch: on the 2-core
machine this was measured on, that was half the step of a model with a 32,000-token vocabulary
(bench/cpu_heap.py). With ``mmap`` turned off for malloc and the heap's trim threshold raised, a freed
block stays in the heap and the next step's block of the same size reuses its pages.

What it costs: memory freed in the middle of a run is not given back to the system until the
process ends, and freed blocks a little too small for the next request stay beside it: the peak
resident size measured up to a third higher on big-vocabulary steps (bench/cpu_heap.py).
``ROUNDS_MALLOC=system`` leaves glibc's defaults as they are.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt takes a C int: the largest trim threshold it can be told (memory free at the heap's top
# beyond this is still handed back)
TRIM_THRESHOLD = 2**31 - 1
# its defaults (glibc 2.26 and later), for restore()
DEFAULT_MMAP_MAX = 65536
DEFAULT_TRIM_THRESHOLD = 128 * 1024

ENV = "ROUNDS_MALLOC"
REUSE = "reuse"  # what keep_freed_memory() did, as recorded in a run's runtime ("allocator")
SYSTEM = "system"

_kept = False  # keep_freed_memory() is in force in this process (until restore())


def _mallopt():
    """glibc's ``mallopt``, or None (not Linux, or a C library without it, such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt does nothing
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def choice() -> str:
    """What ``ROUNDS_MALLOC`` asks for: ``REUSE`` (unset or empty, the default) or ``SYSTEM``."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", REUSE):
        return REUSE
    if value == SYSTEM:
        return SYSTEM
    from engine.errors import UserError

    raise UserError(f"{ENV}={os.environ[ENV]!r} is not a choice of C heap", field=ENV,
                    hint=f"unset it (freed memory is kept for reuse), or set {ENV}=system for glibc's defaults")


def keep_freed_memory() -> str:
    """Keep freed memory in this process's heap for reuse (see the module's docstring). Returns what
    the process's allocator now does: ``REUSE``, or ``SYSTEM`` where ``ROUNDS_MALLOC=system`` asked for
    glibc's defaults or this is not glibc. A value of ``ROUNDS_MALLOC`` that is neither is a UserError.
    """
    if choice() == SYSTEM:
        return SYSTEM
    mallopt = _mallopt()
    if mallopt is None:
        return SYSTEM
    global _kept
    # mallopt returns 1 on success
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        restore()
        return SYSTEM
    _kept = True
    return REUSE


def kept() -> bool:
    """Whether keep_freed_memory() is in force in this process (a probe taken inside a training process
    must leave it so)."""
    return _kept


def restore() -> None:
    """glibc's defaults again (a probe that measured under keep_freed_memory, in a process that goes on)."""
    global _kept
    _kept = False
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        # and what the heap kept meanwhile goes back to the system where it can (free memory at the heap's
        # top; blocks freed below a live one may still serve the next large requests)
        ctypes.CDLL(None).malloc_trim(0)
