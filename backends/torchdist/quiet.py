"""Keep one known-harmless torch warning from the user, and nothing else.

c10d (torch/csrc/distributed/c10d/socket.cpp) asks getnameinfo() for the host name of every
TCPStore peer it connects to or accepts, and when the lookup fails -- err=-3, EAI_AGAIN: no
resolver reachable, as inside the emulated cluster's network namespaces, whose 10.x addresses
are in no hosts file -- it writes, from C++ straight to file descriptor 2, once per connection:

    [W1129 21:47:04.309745707 socket.cpp:207] [c10d] The hostname of the client socket cannot be retrieved. err=-3

The connection itself is made by address and works. TORCH_CPP_LOG_LEVEL=ERROR would silence it
and every other C++ warning with it, so instead ``drop_stderr_lines`` passes the rank's stderr
through a small filter process that drops the lines containing that message and forwards every
other byte unchanged as it arrives. A separate process (not a thread) so that nothing is lost
when the rank dies abruptly (os._exit, abort, SIGKILL): the filter reads until every writer is
gone, then exits.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

C10D_HOSTNAME = "The hostname of the client socket cannot be retrieved"

# The filter (run as `python -I -S -c`): whole lines containing a needle are dropped; a partial
# line is forwarded at once unless it may be the start of a c10 log line ("[W..."), which c10
# writes whole (one write per line), so it is held only until its newline.
_FILTER = r"""
import os, sys
needles = [a.encode() for a in sys.argv[1:]]
def put(b):
    while b:
        b = b[os.write(1, b):]
buf = b""
try:
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        put(b"".join(l + b"\n" for l in lines if not any(n in l for n in needles)))
        if buf and not buf.startswith(b"[W"):
            put(buf)
            buf = b""
    if buf and not any(n in buf for n in needles):
        put(buf)
except (BrokenPipeError, KeyboardInterrupt):
    pass
"""


@contextlib.contextmanager
def drop_stderr_lines(*needles: str):
    """While inside, lines written to this process's file descriptor 2 (by Python, C++ or a child
    process) that contain one of `needles` are dropped; all other output reaches the original
    stderr unchanged. On exit fd 2 is restored and the filter drained (waited for up to 5 s).
    With no needles, or where the filter cannot start, it does nothing."""
    if not needles:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        from backends.torchdist.launch import spawn
        proc = spawn([sys.executable, "-I", "-S", "-c", _FILTER, *needles], stdin=subprocess.PIPE,
                     stdout=saved, stderr=subprocess.DEVNULL, cwd=os.getcwd(), die_with_parent=False)
    except OSError:
        os.close(saved)
        yield
        return
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()            # fd 2 is now the pipe's only write end (here)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)         # closes the pipe: the filter sees end-of-file once children let go
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def quiet_c10d():
    """drop_stderr_lines(C10D_HOSTNAME), unless TORCH_CPP_LOG_LEVEL asks for c10d's INFO logs
    (someone debugging the rendezvous wants every line)."""
    if os.environ.get("TORCH_CPP_LOG_LEVEL", "").strip().upper() in ("INFO", "0"):
        return contextlib.nullcontext()
    return drop_stderr_lines(C10D_HOSTNAME)
