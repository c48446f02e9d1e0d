"""Linux process controls through libc (``prctl``, ``unshare``), for the platform's processes
and the stdio MCP sandbox launcher.

``protect_process()`` makes the calling process non-dumpable (``PR_SET_DUMPABLE`` 0): other
processes of the same user -- a stdio MCP server started by the platform, say -- can no longer
read its ``/proc/<pid>/environ`` or ``/proc/<pid>/mem`` (where ENGINEX_MASTER_KEY and the
database URL live) or attach a debugger to it; core dumps are off. It is best effort: on
other systems, or if the call fails, it returns False and the process runs on. Processes with
CAP_SYS_PTRACE (root) can still read a non-dumpable process; see docs/MCP.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import lru_cache

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


def prctl(option: int, value: int) -> None:
    """``prctl(option, value, 0, 0, 0)``; OSError on failure or where there is no prctl."""
    libc = _libc()
    if libc is None:
        raise OSError(0, "prctl is not available on this system")
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def unshare(flags: int) -> None:
    """``unshare(flags)`` (new namespaces for the calling process); OSError on failure."""
    libc = _libc()
    if libc is None:
        raise OSError(0, "unshare is not available on this system")
    if libc.unshare(ctypes.c_int(flags)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def protect_process() -> bool:
    """Make this process non-dumpable (see the module docstring). Never raises; True if the
    process is now non-dumpable."""
    try:
        prctl(PR_SET_DUMPABLE, 0)
    except OSError:
        return False
    return not is_dumpable()


def is_dumpable() -> bool:
    """Whether this process is dumpable (True where that cannot be asked)."""
    libc = _libc()
    if libc is None:
        return True
    return bool(libc.prctl(ctypes.c_int(PR_GET_DUMPABLE), ctypes.c_ulong(0), ctypes.c_ulong(0),
                           ctypes.c_ulong(0), ctypes.c_ulong(0)))
