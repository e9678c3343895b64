"""Process identity from /proc, shared by the backends' launchers and the emulated cluster's owner checks."""
from __future__ import annotations

from pathlib import Path


def proc_start(pid: int):
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None when it is gone:
    (pid, start) names a process even after its pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
