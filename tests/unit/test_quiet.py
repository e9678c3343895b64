"""c10d's 'hostname of the client socket' warning is dropped from a rank's stderr, and nothing else
(backends/torchdist/quiet.py); the real warning, in a network namespace: tests/integration/test_quiet_netns.py."""
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
# the line as torch 2.x writes it (socket.cpp, through c10's logger, straight to fd 2)
C10D_LINE = "[W1129 21:47:04.309745707 socket.cpp:207] [c10d] The hostname of the client socket cannot be retrieved. err=-3"
OTHER_C10D = "[W1129 21:47:05.000000000 socket.cpp:540] [c10d] The client socket has failed to connect to [h0]:29500"


def _child(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import os, sys
        from backends.torchdist.quiet import quiet_c10d
        C10D_LINE, OTHER_C10D = sys.argv[1], sys.argv[2]
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, C10D_LINE, OTHER_C10D], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO})


def test_only_the_hostname_line_is_dropped_and_fd2_is_restored():
    r = _child("""
        print("before", file=sys.stderr, flush=True)
        with quiet_c10d():
            os.write(2, (C10D_LINE + "\\n").encode())          # as C++ writes it: one write, fd 2
            os.write(2, (OTHER_C10D + "\\n").encode())
            print("python warning", file=sys.stderr, flush=True)
            os.write(2, (C10D_LINE + "\\nsame write, next line\\n").encode())
            os.write(2, b"partial ")
            os.write(2, b"line\\n")
        print("after", file=sys.stderr, flush=True)
        print("stdout untouched")
    """)
    assert r.returncode == 0, r.stderr
    assert "hostname of the client socket" not in r.stderr
    assert r.stderr.splitlines() == ["before", OTHER_C10D, "python warning", "same write, next line", "partial line",
                                     "after"]
    assert r.stdout == "stdout untouched\n"


def test_nothing_is_lost_when_the_rank_dies_abruptly():
    # os._exit skips every cleanup (as the watchdog's exit and a crash do): the filter, a separate
    # process, still forwards what was written, the last partial line included
    r = _child("""
        with quiet_c10d():
            os.write(2, (C10D_LINE + "\\n").encode())
            os.write(2, b"[rank 0] rank 0 failed in phase forward: RuntimeError: boom\\n")
            os.write(2, b"no newline at the end")
            os._exit(3)
    """)
    assert r.returncode == 3
    assert r.stderr == "[rank 0] rank 0 failed in phase forward: RuntimeError: boom\nno newline at the end"


def test_info_level_keeps_every_line():
    # TORCH_CPP_LOG_LEVEL=INFO: someone is debugging the rendezvous and sees every line
    code = ("import os\nfrom backends.torchdist.quiet import quiet_c10d\nwith quiet_c10d():\n"
            f"    os.write(2, {(C10D_LINE + chr(10)).encode()!r})\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "TORCH_CPP_LOG_LEVEL": "INFO"})
    assert r.stderr == C10D_LINE + "\n"
