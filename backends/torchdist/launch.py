"""The one place parsim starts processes: the ranks of a run, watched, and never one left behind.

Every rank launcher of the project goes through this module (a test, tests/unit/test_one_launcher.py,
fails on a ``subprocess.Popen`` anywhere else in backends/, parsim/ or studies/):

* ``launch(cfg, nproc)``: the backend's ranks (training, benchmarks, calibration probes) on
  ``python -m backends.torchdist.runner``, optionally behind a per-rank command prefix
  (``rank_prefix``: e.g. ``ip netns exec <host> env RANK=...`` for an emulated cluster);
* ``run_ranks(argvs)``: any command once per rank (``parsim emulate run -- CMD``), with the same
  watching: a failed rank stops the others and is named;
* ``spawn`` / ``run_process``: one helper process (a probe server, a device probe), with the same
  PR_SET_PDEATHSIG and cleanup.

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
from parsim.outputs import write_atomic

ROOT = Path(__file__).resolve().parents[2]
_PEER_WORDS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "peer",
               "socket", "unable to", "connection refused", "gloo", "nccl", "watchdog", "no progress")


class RunFailed(ParsimError):
    """A rank died, failed or hung; the message names it and the cause. ``pids``: the rank processes
    (all reaped by the time this is raised); ``returncode``: the named rank's exit status (negative:
    the signal), 124 when the run timed out."""
    pids: tuple = ()
    returncode: int = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(argv, *, env: dict | None = None, cwd=None, stdin=None, stdout=None, stderr=None,
          text: bool = False, die_with_parent: bool = True) -> subprocess.Popen:
    """Start one process (the only ``subprocess.Popen`` of the project): it gets PR_SET_PDEATHSIG(SIGKILL),
    so it dies with this process even when this one is killed with SIGKILL; through ``ip netns exec`` and
    ``env`` too (neither is set-uid). cwd defaults to the repository root. The caller reaps it
    (``stop``). die_with_parent=False only for a process that must outlive its parent by design and
    exits by itself (quiet.py's stderr filter drains the pipe to end-of-file after a rank dies)."""
    return subprocess.Popen(list(map(str, argv)), env=env, cwd=str(cwd or ROOT), stdin=stdin, stdout=stdout,
                            stderr=stderr, text=text, preexec_fn=_pdeathsig if die_with_parent else None)


def stop(procs, grace_s: float = 3.0) -> None:
    """Terminate every process of `procs` still running, SIGKILL after `grace_s`, and reap them all."""
    _kill_all(procs, grace_s)


def run_process(argv, timeout_s: float, *, env: dict | None = None, what: str = "process"):
    """Run one helper process to completion, output captured: (returncode, stdout, stderr), text.
    Raises RunFailed (returncode 124) when it runs past `timeout_s` seconds; it is killed then, and
    whenever this call is interrupted."""
    p = spawn(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        e = RunFailed(f"{what} did not finish within its timeout of {timeout_s:.0f} s; killed")
        e.returncode = 124
        raise e from None
    finally:
        _kill_all([p], 1.0)
    return p.returncode, out, err


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


RUNS_DIR_PREFIX = "run-"


def runs_root() -> Path:
    """Where run directories live: ``$TMPDIR/parsim-runs-<uid>`` (mode 0700, ours). A run's directory
    is named after its launcher (pid and start time), so a later run reaps those whose launcher died."""
    root = Path(tempfile.gettempdir()) / f"parsim-runs-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(root)
        if not root.is_dir() or root.is_symlink() or st.st_uid != os.getuid():
            return Path(tempfile.gettempdir())
    except OSError:
        return Path(tempfile.gettempdir())
    return root


from backends.procs import proc_start as _proc_start  # noqa: E402  (one reader of /proc/PID/stat's start time)


def _proc_state(pid: int) -> str:
    """One letter from /proc/PID/stat: R, S, D, T (stopped), t (traced), Z... ('' when gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def reap_run_dirs(root: Path | None = None) -> list:
    """Remove run directories whose launcher is gone (killed with SIGKILL: no `finally` ran).
    Returns the paths removed; directories of live launchers are never touched."""
    import shutil
    root = root or runs_root()
    gone = []
    for d in root.glob(f"{RUNS_DIR_PREFIX}*"):
        parts = d.name.split("-")   # run-PID-START-random
        if len(parts) < 4 or not parts[1].isdigit():
            continue
        if _proc_start(int(parts[1])) == parts[2]:
            continue   # its launcher is alive
        shutil.rmtree(d, ignore_errors=True)
        gone.append(str(d))
    return gone


class _Terminated(BaseException):
    """SIGTERM reached the launcher: unwind so the `finally` stops the ranks and removes the run dir."""


def launch(cfg: dict, nproc: int, timeout_s: float = 300.0, grace_s: float = 5.0, env: dict | None = None,
           keep_dir: bool = False, rank_prefix=None, on_start=None, progress=None) -> dict:
    """Run `nproc` ranks of ``python -m backends.torchdist.runner`` on `cfg` (see runner.worker_main) and
    return rank 0's report: a parsim.predict.StepReport (source "measured"), or a list of results for
    cfg["jobs"] (or a benchmark, or a task's results).

    rank_prefix(rank) -> argv placed before each rank's command (default: none, a local process), e.g.
    ``ip netns exec NS env RANK=... MASTER_ADDR=...`` to run the rank in an emulated host; variables it
    sets win over the launcher's. on_start(): called once every rank has been started. progress(phases):
    called about every second with {rank: its heartbeat's phase ('' before its first beat)}, e.g. to draw
    a progress bar.

    Raises RunFailed naming the rank that failed, hung or stopped, and why. SIGTERM stops every rank,
    removes the run directory and exits 143 with one line; after a kill -9 of the launcher its ranks
    die with it (PR_SET_PDEATHSIG) and the next launch removes its run directory, saying so."""
    def body(work: Path):
        c = dict(cfg, status_dir=str(work), out=str(work / "report.json"))
        write_atomic(work / "config.json", json.dumps(c))
        argv = [sys.executable, "-m", "backends.torchdist.runner", str(work / "config.json")]
        argvs = [list(rank_prefix(r) if rank_prefix else []) + argv for r in range(nproc)]
        _run(argvs, work, dict(c, threads_per_rank=c.get("threads_per_rank", 1)), timeout_s, grace_s, env, logs=True,
             on_start=on_start, progress=progress)
        report = work / "report.json"
        if not report.exists():
            raise RunFailed(f"all {nproc} ranks exited 0 but rank 0 wrote no report; rank 0 log: "
                            f"{_tail(work / 'rank0.log', 3)}")
        from backends.torchdist.runner import reports_from_json
        return reports_from_json(json.loads(report.read_text()))   # measured reports as StepReport
    return _in_run_dir(body, nproc, keep_dir)


def run_ranks(argvs, timeout_s: float, grace_s: float = 2.0, env: dict | None = None, logs: bool = False,
              name: str = "parsim run") -> int:
    """Run one command per rank (argvs[r] is rank r's full argv, prefix included; a program of its own that
    reads RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, set here unless its argv sets them) with the launcher's
    guarantees: a rank that fails stops the others after `grace_s`, the run stops at `timeout_s`, no
    process is left behind. logs=False: the ranks' output goes to this process's stdout/stderr.
    Returns 0; raises RunFailed naming the rank (``returncode``: its exit status, 124 at the timeout)."""
    n = len(argvs)
    cfg = {"watchdog_s": max(float(timeout_s), 120.0)}
    return _in_run_dir(lambda work: _run([list(a) for a in argvs], work, cfg, timeout_s, grace_s, env, logs) or 0,
                       n, False, name)


def _in_run_dir(body, nproc, keep_dir, name="parsim run"):
    """body(work) inside a fresh run directory, with the launcher's SIGTERM handling and cleanup."""
    left = reap_run_dirs()
    if left:
        print(f"{name}: removed {len(left)} run director{'y' if len(left) == 1 else 'ies'} left by killed "
              f"run(s): {' '.join(left)}", file=sys.stderr)
    old = None
    try:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:   # not the main thread
        pass
    me = os.getpid()
    work = Path(tempfile.mkdtemp(prefix=f"{RUNS_DIR_PREFIX}{me}-{_proc_start(me)}-", dir=runs_root()))
    _CURRENT_WORK.append(str(work))
    try:
        return body(work)
    except _Terminated as e:
        print(f"{name}: terminated by SIGTERM: all {nproc} ranks stopped, run directory {e} removed",
              file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        _CURRENT_WORK.remove(str(work))
        if not keep_dir:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


_CURRENT_WORK: list = []


def _on_sigterm(signum, frame):
    raise _Terminated(_CURRENT_WORK[-1] if _CURRENT_WORK else "")


def _run(argvs, work: Path, cfg: dict, timeout_s, grace_s, env, logs: bool, on_start=None, progress=None):
    """Start argvs[r] as rank r (torchrun's variables set), watch them to the end; the only rank loop."""
    nproc = len(argvs)
    base = dict(os.environ)
    base.update(env or {})
    base.update(MASTER_ADDR=base.get("PARSIM_MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(free_port()),
                WORLD_SIZE=str(nproc), PYTHONPATH=os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                # ranks share this machine's CPUs: spinning OpenMP pools would starve gloo's I/O threads
                OMP_NUM_THREADS=str(cfg.get("threads_per_rank") or base.get("OMP_NUM_THREADS")
                                    or max(1, (os.cpu_count() or 1) // nproc)),
                PYTHONUNBUFFERED="1")   # c10d's hostname warning is dropped line by line (backends/torchdist/quiet.py)
    procs, files = [], []
    oom0 = oom_kills()
    try:
        for r, argv in enumerate(argvs):
            e = dict(base, RANK=str(r), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(nproc))
            log = None
            if logs:
                log = open(work / f"rank{r}.log", "wb")
                files.append(log)
            procs.append(spawn(argv, env=e, stdout=log, stderr=subprocess.STDOUT if logs else None))
        if on_start:
            on_start()
        return _watch(procs, work, cfg, timeout_s, grace_s, oom0, progress)
    except RunFailed as e:
        e.pids = tuple(p.pid for p in procs)
        raise
    finally:
        _kill_all(procs)
        for f in files:
            f.close()


def oom_kills():
    """The kernel OOM killer's kill count for this process's memory cgroup (v2 memory.events or
    v1 memory.oom_control), or None where it cannot be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        for f in ([Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events"] if ctrl == "" else
                  [Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control",
                   Path("/sys/fs/cgroup/memory/memory.oom_control")] if "memory" in ctrl.split(",") else []):
            try:
                for kv in f.read_text().splitlines():
                    k, _, v = kv.partition(" ")
                    if k == "oom_kill":
                        return int(v)
            except (OSError, ValueError):
                continue
    return None


def _kill_all(procs, grace_s: float = 3.0):
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in alive:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _heartbeat_age(work: Path, rank: int, now_wall: float):
    """(seconds since rank's watchdog thread last wrote its heartbeat, its phase) or (None, '')."""
    f = work / f"rank{rank}.beat"
    try:
        age = now_wall - f.stat().st_mtime
        phase = f.read_text(errors="replace").strip()
    except OSError:
        return None, ""
    return age, _beat_fields(phase)[1]


def _beat_fields(line: str):
    """(wall time of the rank's last progress or None, phase) from a heartbeat line "<since> <phase>"."""
    head, _, rest = line.partition(" ")
    try:
        return float(head), rest
    except ValueError:
        return None, line


def _first_stalled(stuck: dict, work: Path) -> int:
    """The rank to blame among stalled ones (rank -> wall time of its last progress): a rank that was not waiting on
    its peers (its phase does not end with runner.WAITS_ON_PEERS) before one that was, then the one that stopped
    first. Last-progress times alone are a race on a busy machine: a hung rank descheduled before its last beat can
    look later than the peer that then waited for it in a gradient sync."""
    from backends.torchdist.runner import WAITS_ON_PEERS     # the runner's phase wording (no torch at import)
    now = time.time()
    return min(stuck, key=lambda r: (_heartbeat_age(work, r, now)[1].endswith(WAITS_ON_PEERS), stuck[r]))


def _last_progress(work: Path, rank: int):
    """Wall time at which `rank` last made progress (its heartbeat file), or None."""
    try:
        return _beat_fields((work / f"rank{rank}.beat").read_text(errors="replace").strip())[0]
    except OSError:
        return None


def _stalled_rank(procs, work: Path, limit_s: float, exited=(), stopped_now: bool = True,
                  frozen_s: float | None = None):
    """The rank that stopped progressing, as (rank, reason) or None: a rank whose process is stopped
    (SIGSTOP, a debugger), else the one whose heartbeat (written every second by its watchdog
    thread, which runs even while the main thread waits in a collective) is the stalest, when it is
    older than limit_s. A rank blocked in a collective waiting on a stopped peer still beats.
    stopped_now: a stopped process counts at once (after a peer failed); else only once its
    heartbeat is older than limit_s too (a short stop by a debugger is not a failure).
    frozen_s: the staleness that names a rank that is not stopped (default limit_s); larger while
    nothing has failed, as one C call holding the GIL (loading libtorch on a busy machine) can
    delay the beat thread for seconds."""
    frozen_s = limit_s if frozen_s is None else frozen_s
    now = time.time()
    for r, p in enumerate(procs):
        if r not in exited and _proc_state(p.pid) in ("T", "t"):
            age, phase = _heartbeat_age(work, r, now)
            if not stopped_now and (age is None or age <= limit_s):
                continue
            return r, (f"rank {r} is stopped (SIGSTOP or a debugger)"
                       + (f": no progress for {age:.0f} s" if age is not None else "")
                       + (f" in phase {phase}" if phase else ""))
    ages = {}
    for r, p in enumerate(procs):
        if r in exited:
            continue
        age, phase = _heartbeat_age(work, r, now)
        if age is not None:
            ages[r] = (age, phase)
    if ages:
        r = max(ages, key=lambda k: ages[k][0])
        age, phase = ages[r]
        if age > frozen_s:
            return r, f"rank {r} stopped responding: no heartbeat for {age:.0f} s" + (f" in phase {phase}" if phase else "")
    return None


def _failed(msg: str, rc: int) -> RunFailed:
    e = RunFailed(msg)
    e.returncode = rc
    return e


def _named_rc(msg: str, exited: dict, first_fail) -> int:
    """The exit status of the rank a failure message names first (else of the first rank that failed)."""
    import re
    m = re.match(r"rank\(?s?\)? (\d+)", msg)
    r = int(m.group(1)) if m else None
    if r is not None and r in exited and exited[r][1] != 0:
        return exited[r][1]
    return exited[first_fail[1]][1] if first_fail else 1


def _watch(procs, work: Path, cfg: dict, timeout_s: float, grace_s: float, oom0=None, progress=None) -> None:
    """Poll the ranks until all exit 0 (returns) or one fails, stops or hangs, or the run times out
    (RunFailed naming the rank; every rank killed)."""
    start = time.monotonic()
    first_fail = None       # (time, rank)
    exited = {}
    dog_s = float(cfg.get("watchdog_s", 120))
    # a rank's heartbeat older than this is a rank that cannot run at all (the watchdog thread ticks
    # every min(1 s, watchdog/4)); a busy machine can delay a tick by seconds, not by this much
    stale_s = max(dog_s, 10.0)
    next_check = start + 1.0
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
            stalled = _stalled_rank(procs, work, 10.0, exited)
            _kill_all(procs)
            msg = _failure_message(procs, exited, work, still, stalled, cfg, oom0)
            raise _failed(msg, _named_rc(msg, exited, first_fail))
        if now >= next_check:
            next_check = now + 1.0
            if progress is not None:
                try:
                    progress({r: _heartbeat_age(work, r, time.time())[1] for r in range(len(procs)) if r not in exited})
                except Exception:   # noqa: BLE001 — a display must never stop a run
                    progress = None
            stalled = _stalled_rank(procs, work, stale_s, exited, stopped_now=False,
                                    frozen_s=max(3 * stale_s, float(cfg.get("timeout_s", 60))))
            if stalled is not None and first_fail is None:
                others = [str(x) for x in range(len(procs)) if x != stalled[0]]
                _kill_all(procs)
                raise _failed(f"{stalled[1]}; the other rank(s) {', '.join(others) or '-'} were waiting for it; "
                              "all ranks stopped", 124)
        if now - start > timeout_s:
            running = [r for r in range(len(procs)) if r not in exited]
            stalled = _stalled_rank(procs, work, 10.0, exited)
            _kill_all(procs)
            errs = "; ".join(_cause(r, None, work) for r in running if (work / f"rank{r}.err").exists())
            raise _failed(f"run did not finish within its timeout of {timeout_s:.0f} s: rank(s) "
                          f"{', '.join(map(str, running))} still running"
                          + (f"; {stalled[1]}" if stalled else "") + (f"; {errs}" if errs else "")
                          + "; all ranks killed", 124)
        time.sleep(0.05)


def _cause(rank: int, rc, work: Path, cfg: dict | None = None, oom=None) -> str:
    err = work / f"rank{rank}.err"
    if err.exists():
        return err.read_text().strip().splitlines()[0]
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        msg = f"rank {rank} was killed by {name}"
        if -rc == signal.SIGKILL:   # we send SIGTERM first; a SIGKILL we did not send is most often the OOM killer
            pred = (cfg or {}).get("predicted_memory_GiB")
            want = f"; parsim predicted {pred:.2f} GiB per rank" if isinstance(pred, (int, float)) else ""
            if oom:
                msg += f" by the kernel's OOM killer (cgroup oom_kill count +{oom}): out of host memory{want}"
            else:
                msg += f" (not by parsim) — likely out of memory (host RAM, the kernel's OOM killer), or killed by hand{want}"
        return msg
    tail = _tail(work / f"rank{rank}.log", 1)
    return f"rank {rank} exited with code {rc}" + (f": {tail}" if tail else "")


def _failure_message(procs, exited, work: Path, still=(), stalled=None, cfg=None, oom0=None) -> str:
    """Name the rank that caused the failure: one killed by a signal we did not send, else one that is
    stopped or no longer beats (SIGSTOP), else one whose error is not a consequence of a peer going
    away, else the first to fail."""
    n1 = oom_kills()
    oom = (n1 - oom0) if (n1 is not None and oom0 is not None and n1 > oom0) else 0
    failed = sorted((t, r, rc) for r, (t, rc) in exited.items() if rc != 0)
    culprit = None
    for t, r, rc in failed:
        if rc < 0:
            culprit = (r, rc)
            break
    if culprit is None and stalled is not None:
        others = [str(x) for _, x, _ in failed if x != stalled[0]]
        return (stalled[1] + (f" (rank(s) {', '.join(others)} gave up waiting for it)" if others else "")
                + "; all ranks stopped")
    stuck = {}
    for t, r, rc in failed:   # watchdog firings: the rank that stopped progressing first is the cause
        try:
            lines = (work / f"rank{r}.err").read_text().splitlines()
            stuck[r] = float(next(x for x in lines if x.startswith("since="))[6:])
        except (OSError, StopIteration, ValueError):
            pass
    if culprit is None and stuck:
        # a rank whose own watchdog had not fired yet when another's did (it was stopped by us) may still be
        # the one that stopped progressing first: compare every rank's last progress from its heartbeat
        fired = set(stuck)
        for r in range(len(procs)):
            if r not in stuck and (since := _last_progress(work, r)) is not None:
                stuck[r] = since
        r = _first_stalled(stuck, work)
        if r not in fired:       # it never said so itself: say it for it, with its phase
            _, phase = _heartbeat_age(work, r, time.time())
            others = [str(x) for x in sorted(fired)]
            return (f"rank {r}: no progress for {max(0.0, time.time() - stuck[r]):.0f} s in phase {phase} "
                    f"(rank(s) {', '.join(others)} gave up waiting for it); all ranks stopped")
        culprit = (r, exited[r][1])
    if culprit is None:
        for t, r, rc in failed:
            msg = _cause(r, rc, work, cfg, oom).lower()
            if not any(w in msg for w in _PEER_WORDS) or "injected" in msg or "no progress" in msg \
                    or "out of memory" in msg:
                culprit = (r, rc)
                break
    if culprit is None and still:   # every failure was a timeout waiting on a peer that never answered
        return (f"rank(s) {', '.join(map(str, still))} stopped making progress (hang?): the other ranks gave up "
                f"waiting for them ({_cause(failed[0][1], failed[0][2], work, cfg, oom)}); all ranks stopped")
    if culprit is None:
        culprit = (failed[0][1], failed[0][2])
    r, rc = culprit
    others = [str(x) for _, x, _ in failed if x != r]
    tail = _tail(work / f"rank{r}.log", 4)
    msg = _cause(r, rc, work, cfg, oom)   # names the rank
    if others:
        msg += f" (then rank(s) {', '.join(others)} aborted)"
    msg += "; all ranks stopped"
    if os.environ.get("PARSIM_DEBUG") and tail:
        msg += f"\n--- rank {r} log tail ---\n{tail}"
    return msg
