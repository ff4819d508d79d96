"""Wake on a session folder's changes: inotify where the kernel has it, else a modest poll.

``FolderWatch(folder)`` gives a file descriptor that becomes readable when a file in the folder
is written, created or renamed into it (``events.jsonl`` appended, ``session.json`` replaced), for
an event loop to wait on (``asyncio``'s ``add_reader``); ``drain()`` empties it. Where inotify is
missing (macOS, some containers) or refuses (``fs.inotify.max_user_watches``), ``FolderWatch.open``
returns None and the caller polls (``POLL_SECONDS``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

POLL_SECONDS = 1.0  # the poll where inotify is missing: one stat a second
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

_libc = None


def _inotify():
    global _libc
    if _libc is None:
        if not sys.platform.startswith("linux"):
            _libc = False
        else:
            try:
                try:  # glibc's name first: find_library runs ldconfig (a few milliseconds)
                    lib = ctypes.CDLL("libc.so.6", use_errno=True)
                except OSError:
                    lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
                lib.inotify_init1.argtypes, lib.inotify_init1.restype = [ctypes.c_int], ctypes.c_int
                lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
                lib.inotify_add_watch.restype = ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):
                _libc = False
    return _libc or None


class FolderWatch:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, folder: str | os.PathLike) -> FolderWatch | None:
        """A watch on ``folder``, or None where inotify is not available (then poll)."""
        if os.environ.get("ROUNDS_NO_INOTIFY"):  # to try the poll, and for tests of it
            return None
        lib = _inotify()
        if lib is None:
            return None
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        if lib.inotify_add_watch(fd, os.fsencode(folder), IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bool:
        """Read every pending notification; True if there was any."""
        got = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return got
            except OSError:
                return got
            if not data:
                return got
            got = True

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
