"""Spawn the local ranks of a run, watch them, and never leave one behind.

``launch(cfg, nproc)`` starts ``nproc`` processes of ``python -m backends.torchdist.runner``
with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (the same variables
torchrun sets, so the runner is one entry point for both), then polls them:

* all exit 0 -> the report rank 0 wrote (write-then-rename, so never half a file);
* one exits non-zero or is killed -> the others get ``grace_s`` to notice (gloo raises on a
  closed peer), then are terminated; a :class:`RunFailed` names the rank that failed
  first and its cause (its one-line ``rank<r>.err``, its signal, or its exit code);
* nothing finishes within ``timeout_s`` -> every rank is killed, :class:`RunFailed` says
  which ranks were still running.

Children get PR_SET_PDEATHSIG(SIGKILL), so they die with the launcher even when it is
killed with SIGKILL; and the launcher kills whatever is left in a ``finally``.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parsim.errors import ParsimError

ROOT = Path(__file__).resolve().parents[2]
_PEER_WORDS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "peer",
               "socket", "unable to", "connection refused", "gloo", "nccl", "watchdog", "no progress")


class RunFailed(ParsimError):
    """A rank died, failed or hung; the message names it and the cause. ``pids``: the rank processes
    (all reaped by the time this is raised)."""
    pids: tuple = ()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def launch(cfg: dict, nproc: int, timeout_s: float = 300.0, grace_s: float = 5.0, env: dict | None = None,
           keep_dir: bool = False) -> dict:
    """Run `nproc` local ranks on `cfg` (see runner.worker_main) and return rank 0's report: a
    parsim.predict.StepReport (source "measured"), or a list of results for cfg["jobs"]."""
    work = Path(tempfile.mkdtemp(prefix="parsim-run-"))
    cfg = dict(cfg, status_dir=str(work), out=str(work / "report.json"))
    (work / "config.json").write_text(json.dumps(cfg))
    base = dict(os.environ)
    base.update(env or {})
    base.update(MASTER_ADDR=base.get("PARSIM_MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(free_port()),
                WORLD_SIZE=str(nproc), PYTHONPATH=os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                OMP_NUM_THREADS=str(cfg.get("threads_per_rank", 1)), PYTHONUNBUFFERED="1")
    procs, logs = [], []
    try:
        for r in range(nproc):
            e = dict(base, RANK=str(r), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(nproc))
            log = open(work / f"rank{r}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "backends.torchdist.runner", str(work / "config.json")],
                                          env=e, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                                          preexec_fn=_pdeathsig))
        return _watch(procs, work, cfg, timeout_s, grace_s)
    except RunFailed as e:
        e.pids = tuple(p.pid for p in procs)
        raise
    finally:
        _kill_all(procs)
        for log in logs:
            log.close()
        if not keep_dir:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


def _kill_all(procs):
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + 3
    for p in alive:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _watch(procs, work: Path, cfg: dict, timeout_s: float, grace_s: float) -> dict:
    start = time.monotonic()
    first_fail = None       # (time, rank)
    exited = {}
    while True:
        now = time.monotonic()
        for r, p in enumerate(procs):
            if r not in exited and p.poll() is not None:
                exited[r] = (now, p.returncode)
                if p.returncode != 0 and first_fail is None:
                    first_fail = (now, r)
        if len(exited) == len(procs) and first_fail is None:
            break
        if first_fail is not None and (len(exited) == len(procs) or now - first_fail[0] > grace_s):
            still = [r for r in range(len(procs)) if r not in exited]
            _kill_all(procs)
            raise RunFailed(_failure_message(procs, exited, work, still))
        if now - start > timeout_s:
            running = [r for r in range(len(procs)) if r not in exited]
            _kill_all(procs)
            errs = "; ".join(_cause(r, None, work) for r in running if (work / f"rank{r}.err").exists())
            raise RunFailed(f"run did not finish within its timeout of {timeout_s:.0f} s: rank(s) "
                            f"{', '.join(map(str, running))} still running{'; ' + errs if errs else ''}; all ranks killed")
        time.sleep(0.05)
    report = work / "report.json"
    if not report.exists():
        raise RunFailed(f"all {len(procs)} ranks exited 0 but rank 0 wrote no report; rank 0 log: {_tail(work / 'rank0.log', 3)}")
    from backends.torchdist.runner import reports_from_json
    return reports_from_json(json.loads(report.read_text()))   # measured reports as StepReport


def _cause(rank: int, rc, work: Path) -> str:
    err = work / f"rank{rank}.err"
    if err.exists():
        return err.read_text().strip().splitlines()[0]
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"rank {rank} was killed by {name}"
    tail = _tail(work / f"rank{rank}.log", 1)
    return f"rank {rank} exited with code {rc}" + (f": {tail}" if tail else "")


def _failure_message(procs, exited, work: Path, still=()) -> str:
    """Name the rank that caused the failure: one killed by a signal we did not send, else one whose
    error is not a consequence of a peer going away, else the first to fail."""
    failed = sorted((t, r, rc) for r, (t, rc) in exited.items() if rc != 0)
    culprit = None
    for t, r, rc in failed:
        if rc < 0:
            culprit = (r, rc)
            break
    stuck = {}
    for t, r, rc in failed:   # watchdog firings: the rank that stopped progressing first is the cause
        try:
            lines = (work / f"rank{r}.err").read_text().splitlines()
            stuck[r] = float(next(x for x in lines if x.startswith("since="))[6:])
        except (OSError, StopIteration, ValueError):
            pass
    if culprit is None and stuck:
        r = min(stuck, key=stuck.get)
        culprit = (r, exited[r][1])
    if culprit is None:
        for t, r, rc in failed:
            msg = _cause(r, rc, work).lower()
            if not any(w in msg for w in _PEER_WORDS) or "injected" in msg or "no progress" in msg:
                culprit = (r, rc)
                break
    if culprit is None and still:   # every failure was a timeout waiting on a peer that never answered
        return (f"rank(s) {', '.join(map(str, still))} stopped making progress (hang?): the other ranks gave up "
                f"waiting for them ({_cause(failed[0][1], failed[0][2], work)}); all ranks stopped")
    if culprit is None:
        culprit = (failed[0][1], failed[0][2])
    r, rc = culprit
    others = [str(x) for _, x, _ in failed if x != r]
    tail = _tail(work / f"rank{r}.log", 4)
    msg = _cause(r, rc, work)   # names the rank
    if others:
        msg += f" (then rank(s) {', '.join(others)} aborted)"
    msg += "; all ranks stopped"
    if os.environ.get("PARSIM_DEBUG") and tail:
        msg += f"\n--- rank {r} log tail ---\n{tail}"
    return msg
