"""`parsim calibrate`: measure this machine's CPU (GEMM, element-wise, memory, host overheads) and its
loopback collectives with torch, fit the ``cpu`` device profile and the ``cpu-local`` link, and write
them where parsim loads them from.

The measuring is the backend's (``backends.torchdist.calibrate``, multi-process parts through the one
launcher), the fitting the core's (``parsim.calibrate.fit``). Output: ``devices.yaml`` and
``cpu-local.yaml`` (and the raw measurements, ``calibration.json``; ``calibration-comm.json`` for
``--comm-only``) in ``--out DIR``, default the
calibration home (``$PARSIM_HOME``, else ``$XDG_DATA_HOME/parsim``, else ``~/.local/share/parsim``),
which parsim reads on every later command. About 8 minutes in full; ``--quick`` takes seconds
(rough figures, said so in their source: for tests and a first try).
"""
from __future__ import annotations

import json
import os
import sys
import time


def add_arguments(p):
    p.add_argument("--out", metavar="DIR", help="directory to write devices.yaml and cpu-local.yaml into (default: "
                   "the calibration home, $PARSIM_HOME or $XDG_DATA_HOME/parsim or ~/.local/share/parsim)")
    p.add_argument("--quick", action="store_true", help="few sizes, short budgets, 2 ranks, one launch: seconds, "
                   "rough figures (their source says QUICK MODE)")
    p.add_argument("--no-comm", action="store_true", help="skip the multi-process collective measurements (keeps "
                   "the step overheads of the profile already in --out, if any)")
    p.add_argument("--comm-only", action="store_true", help="re-measure only the collective step overheads and the "
                   "loopback link, keeping the rest of the cpu profile already in --out")
    p.add_argument("--json", action="store_true", help="also print the raw measurements as JSON (stdout)")


def _check(a):
    """Every flag before minutes of measuring: (output directory, the profile already there or None).
    ParsimError (one line) otherwise."""
    from parsim import calibrate as C
    from parsim.errors import ParsimError
    from parsim.outputs import check_output_dir, check_output_path
    if a.no_comm and a.comm_only:
        raise ParsimError("--no-comm and --comm-only exclude each other: expected at most one of them")
    default = a.out is None
    out = C.home() if default else check_output_dir(a.out, "--out")
    if default:   # the calibration home: created with its parents (XDG), then checked like any directory
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParsimError(f"cannot create the calibration directory {out}: {e.strerror or e} "
                              "(set PARSIM_HOME or pass --out DIR)") from None
        check_output_dir(out, "calibration directory")
    old = None
    f = out / C.DEVICES_FILE
    if f.exists():
        check_output_path(f, (".yaml",), "--out")
        old = C.read_profile(f)
    if a.comm_only and not old:
        raise ParsimError(f"--comm-only needs a cpu profile in {f}; run `parsim calibrate` without it first")
    return out, old


def run(a) -> int:
    from parsim import calibrate as C
    from parsim.outputs import make_output_dir, write_atomic
    from parsim.progress import bar
    out, old = _check(a)
    try:
        from backends.torchdist import calibrate as M
    except ImportError as e:   # torch missing: the measuring needs it, the rest of parsim does not
        from parsim.errors import ParsimError
        raise ParsimError(f"parsim calibrate measures with torch, which cannot be imported here ({e})") from None
    comm, local = not a.no_comm, not a.comm_only
    stages = M.plan_steps(a.quick, comm, local)
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]   # before our own ranks add to it
    with bar("parsim calibrate", len(stages)) as b:
        raw = M.measure(quick=a.quick, comm=comm, local=local, tick=lambda what: b.update(stages.index(what)
                                                                                         if what in stages else None, what))
        b.update(len(stages), "fitting the profile")
        profile, cluster = C.fit(raw, old)
    if a.out is not None:
        make_output_dir(out, "--out")
    paths = C.write_results(out, profile, cluster)
    raw_file = write_atomic(out / ("calibration.json" if local else "calibration-comm.json"), json.dumps(raw, indent=1),
                            what="raw measurements")
    print(f"cpu: fp32 peak {profile['peak_TFLOPs']['fp32'] * 1e3:.1f} GFLOP/s (1 thread), vector "
          f"{profile['vector_TFLOPs'] * 1e3:.2f} GFLOP/s, memory {profile['memory_bandwidth_GBps']:.1f} GB/s, "
          f"matmul_sustained_fraction {profile['matmul_sustained_fraction']} -> {paths[0]}", file=sys.stderr)
    if cluster:
        f = raw["allreduce_fit"]
        print(f"cpu-local link: {cluster['nvlink_GBps']:.3f} GB/s, {cluster['nvlink_latency_us']:.1f} us (all-reduce "
              f"fit {f['alpha_s'] * 1e6:.0f} us + n/{1 / f['beta_s_per_B'] / 1e9:.3f} GB/s); executor step "
              f"{profile['executor_step_overhead_us']} us, per message {profile['executor_message_overhead_us']} us, "
              f"native step {profile['native_step_overhead_us']} us -> {paths[1]}", file=sys.stderr)
    print(f"calibration took {time.monotonic() - t0:.0f} s; raw measurements in {raw_file}"
          + ("" if a.out is None or out == C.home() else
             f"; parsim reads calibration from {C.home()}: use PARSIM_HOME={out} to load these"), file=sys.stderr)
    warn = C.busy_warning(max(load0, os.getloadavg()[0]), os.cpu_count() or 1)
    if warn:
        print(warn, file=sys.stderr)
    if a.json:
        print(json.dumps(raw))
    return 0
