"""Fit the local ``cpu`` device profile and the ``cpu-local`` loopback link from measurements (the
core half of `parsim calibrate`; the measuring is the backend's, ``backends.torchdist.calibrate``).

Pure functions of plain data (no torch, no ``backends``):

* ``fit(raw)`` -> (``cpu`` profile, ``cpu-local`` cluster entry or None): peak = the best GEMM FLOP/s
  seen, ``matmul_efficiency`` = FLOP/s at each GEMM size (GFLOP) / peak; ``vector_TFLOPs`` and
  ``vector_efficiency`` likewise from the element-wise multiply; ``memory_bandwidth_GBps`` and
  ``memory_efficiency`` (per MB moved) from the copies; ``overhead_us`` the host overheads;
  ``matmul_sustained_fraction`` solved so parsim's compute model of the probe step equals its
  measured time (``sustained_fraction``).
* Software overhead of collectives (``step_overheads``): (time − steps · RTT/2) = o_step·X + o_msg·Y
  with X, Y parsim's own overhead price of the schedule at (1, 0) and (0, 1) (``overhead_terms``),
  least squares on the relative error over the explicit points: ``executor_step_overhead_us`` and
  ``executor_message_overhead_us``; gloo's own collective as 2(p−1) steps × max(1, p/cores):
  ``native_step_overhead_us``.
* The loopback link (``fit_alpha_beta``, ``link_from_fit``): t = A + n·B fitted by least squares to
  the 2-rank all-reduce, then converted to the link's bandwidth by pricing the same all-reduce with
  parsim's own network model at two link settings and solving, the step overheads in effect; latency
  = half the raw TCP round trip.

Where results live (``home()``): ``$PARSIM_HOME``, else ``$XDG_DATA_HOME/parsim``, else
``~/.local/share/parsim`` — never inside the installed package. ``devices.yaml`` there is merged over
the device catalog (``parsim.hardware``); ``cpu-local.yaml`` there is the cluster `parsim run` predicts
CPU runs on. ``PARSIM_DEVICES_LOCAL=FILE`` names a device file explicitly instead.
``parsim/data/measured/<machine>/`` keeps profiles measured elsewhere, as data with their source (the
development VM's: the stored CPU and netem measurements were taken there, so the tests and the
accuracy ledger price them with it); none of them is loaded unless named.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

DATA = Path(__file__).parent / "data"
DEVICES_FILE = "devices.yaml"          # in home(): the measured device profiles (the `cpu` one)
CLUSTER_FILE = "cpu-local.yaml"        # in home(): the measured loopback cluster
MEASURED = DATA / "measured"           # profiles measured on named machines, as data
DEV_VM = MEASURED / "vm-2core"         # the development VM (2 cores): reports/cpu, reports/netem were measured there


def home() -> Path:
    """The directory calibration results are written to and read from: ``$PARSIM_HOME``, else
    ``$XDG_DATA_HOME/parsim``, else ``~/.local/share/parsim`` (it need not exist)."""
    if os.environ.get("PARSIM_HOME"):
        return Path(os.environ["PARSIM_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "parsim"


def devices_file() -> Path | None:
    """The measured device-profile file the catalog merges (``PARSIM_DEVICES_LOCAL``, else
    ``home()/devices.yaml``), or None when there is none."""
    f = Path(os.environ["PARSIM_DEVICES_LOCAL"]) if os.environ.get("PARSIM_DEVICES_LOCAL") else home() / DEVICES_FILE
    return f if f.exists() else None


def local_cluster() -> str:
    """The cluster CPU runs are predicted on: ``home()/cpu-local.yaml`` (the measured loopback link)
    when `parsim calibrate` wrote one, else the ``cpu-local`` preset (placeholder figures)."""
    f = home() / CLUSTER_FILE
    return str(f) if f.exists() else "cpu-local"


def sustained_fraction(profile: dict, probe: dict) -> float:
    """The ``matmul_sustained_fraction`` (in-situ GEMM rate relative to the isolated benchmark) at which
    parsim's compute model (``parsim.costs.compute.layer_times``) of one fwd+bwd of the probe shape
    equals its measured time `probe["measured_s"]`: bisection on (0.05, 1], everything else in
    `profile` fixed; 1.0 when even the full rate predicts longer. Dimensionless, 3 decimals."""
    from parsim.costs.compute import layer_times
    from parsim.hardware import _profile
    from parsim.model import ModelSpec
    spec = ModelSpec("calibration-probe", **probe["probe"])
    base = _profile("cpu", dict(profile, matmul_sustained_fraction=1.0))
    batch, measured = int(probe["batch"]), float(probe["measured_s"])

    def predicted(f):
        lt = layer_times(spec, base.with_sustained_fraction(f), batch, spec.seq_len, 1, False, True, 2)
        return float(spec.layers * (lt.fwd_s + lt.bwd_s) + lt.embed_fwd_s + lt.embed_bwd_s + lt.head_fwd_s + lt.head_bwd_s)
    lo, hi = 0.05, 1.0
    if predicted(hi) >= measured:
        return 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predicted(mid) > measured else (lo, mid)
    return round((lo + hi) / 2, 3)


def tp_layer_overhead_us(tp_probe: dict) -> float:
    """Host time per layer (fwd+bwd, TP collectives excluded) under tensor parallel 2, microseconds:
    ((t5 − c5) − (t1 − c1)) / 4 from the 1- and 5-layer probe steps (t total, c time in TP collectives)."""
    a, b = tp_probe.get("1", tp_probe.get(1)), tp_probe.get("5", tp_probe.get(5))
    return round(max(0.0, ((b["total_s"] - b["tp_comm_s"]) - (a["total_s"] - a["tp_comm_s"])) / 4) * 1e6, 1)


def _when() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fit(raw: dict, old_profile: dict | None = None) -> tuple[dict, dict | None]:
    """(``cpu`` device profile, ``cpu-local`` cluster entry or None) from ``backends.torchdist.calibrate.
    measure``'s raw measurements. Without the local measurements (communication only) `old_profile`
    supplies the rest; without the communication ones the old profile's step overheads are kept
    (with their provenance). Every figure carries its source (date, host, method)."""
    date, host = _when(), raw["host"]["host"]
    quick = " QUICK MODE (few sizes, short budgets: rough figures)" if raw.get("quick") else ""
    if "gemm_fp32" in raw:
        gemm, vec, mem = raw["gemm_fp32"], raw["vector"], raw["copy"]
        peak = max(f for _, f in gemm)
        vpeak = max(f for _, f in vec)
        bw = max(b for _, b in mem)
        bf16 = raw["gemm_bf16"][0][1]
        total = raw["host"].get("memory_bytes") or 8 * 2 ** 30
        overhead = dict(raw["overhead_us"])
        if raw.get("tp_probe"):
            overhead["tp_layer"] = tp_layer_overhead_us(raw["tp_probe"])
        elif old_profile and "tp_layer" in (old_profile.get("overhead_us") or {}):
            overhead["tp_layer"] = old_profile["overhead_us"]["tp_layer"]
        profile = {
            "kind": "cpu",
            "peak_TFLOPs": {"fp32": round(peak / 1e12, 6), "bf16": round(bf16 / 1e12, 6), "fp16": round(bf16 / 1e12, 6)},
            "vector_TFLOPs": round(vpeak / 1e12, 6),
            "memory_GiB": round(total / 2 ** 30, 1),
            "memory_bandwidth_GBps": round(bw / 1e9, 3),
            "matmul_efficiency": efficiency_curve(gemm, peak),
            "vector_efficiency": efficiency_curve(vec, vpeak),
            "memory_efficiency": efficiency_curve(mem, bw),
            "overhead_us": overhead,
            "source": (f"parsim calibrate {date} on {host}, torch {raw['host'].get('torch')},{quick} ONE thread (as one "
                       "parsim-run rank): torch.mm square fp32, median time averaged over the NN/TN/NT layouts (bf16 "
                       "peak = n=256 bf16), torch.mul, copy_ (2 bytes moved per byte); memory_GiB = the host's RAM, "
                       "shared by all ranks; overhead_us = best-of host time of the backend's GPT at hidden 8, one "
                       "token, 1 vs 5 layers (per layer fwd/bwd, the rest of the model, AdamW foreach base + per "
                       "layer); tp_layer = the same per layer fwd+bwd under tensor parallel 2 (DTensor), 2 processes, "
                       "TP collectives excluded"),
        }
        probe = raw["sustained_probe"]
        profile["matmul_sustained_fraction"] = sustained_fraction(profile, probe)
        pr = probe["probe"]
        profile["source"] += (f"; matmul_sustained_fraction = in-situ GEMM rate: fwd+bwd of the backend's GPT at a "
                              f"probe shape (h{pr['hidden']}, {pr['layers']} layers, seq {pr['seq_len']}, batch "
                              f"{probe['batch']}, no preset) measured {probe['measured_s'] * 1e3:.1f} ms, solved so "
                              "that parsim's compute model gives the same")
    else:
        if not old_profile:
            raise ValueError("communication-only measurements need the profile they complete")
        profile = dict(old_profile)
        profile["source"] = str(profile.get("source", "")).split("; *_step_overhead_us (")[0]
    if not raw.get("step_overheads"):
        old = old_profile or {}
        for k in ("executor_step_overhead_us", "executor_message_overhead_us", "native_step_overhead_us", "cores"):
            if k in old:
                profile[k] = old[k]
        note = str(old.get("source", "")).partition("; *_step_overhead_us (")   # keep their provenance too
        if note[1]:
            profile["source"] = f"{profile['source']}{note[1]}{note[2]}"
        return profile, None
    return profile, _fit_comm(profile, raw, date, host, quick)


def _fit_comm(profile: dict, raw: dict, date: str, host: str, quick: str) -> dict:
    """The communication part: per-step overheads (written into `profile`), then the cpu-local link
    fitted with them in effect. Returns the cpu-local cluster entry."""
    steps = raw["step_overheads"]
    cores = int(raw["host"].get("cores") or os.cpu_count() or 1)
    so = step_overheads(steps, cores)
    profile["executor_step_overhead_us"] = so["executor_step_overhead_us"]
    profile["executor_message_overhead_us"] = so["executor_message_overhead_us"]
    profile["native_step_overhead_us"] = so["native_step_overhead_us"]
    profile["cores"] = cores
    launches = len(next(iter(steps[0]["cases"].values()))["launch_times_s"])
    profile["source"] += (f"; *_step_overhead_us ({date}{',' if quick else ''}{quick}) = host software time of "
                          f"collectives: 4 KiB all-reduce on loopback, {'/'.join(str(r['p']) for r in steps)} gloo "
                          "processes, backends.torchdist.bench (median over repeats of the slowest rank), median of "
                          f"{launches} launch(es), minus steps x RTT/2 of a raw TCP ping-pong "
                          f"({'/'.join(f'{x:.0f}' for x in so['rtt_us'])} us); executor = run_schedule "
                          f"{', '.join(k for k in steps[0]['cases'] if k != 'native')}, fitted as step + per-message "
                          "(sends + receives a rank posts) cost through parsim's own overhead price (max(slowest "
                          "rank, total over the cores) per step), least squares on the relative error; native = "
                          "gloo all_reduce as 2(p-1) steps x max(1, processes/cores); points: "
                          + "; ".join(so["per_point"]))
    ar = [tuple(x) for x in raw["allreduce_2proc"]]
    a, b = fit_alpha_beta(ar)
    with _profile_in_effect(profile):   # the bandwidth through parsim's price, overheads included
        link_bw, fit_lat = link_from_fit(a, b, 2)
    # latency: the raw TCP one-way time (as the netem probes); the fit's intercept is mostly the
    # software overhead now priced per step (fit_lat is what would remain of it, kept as a check)
    link_lat = float(np.median([r["rtt_s"] for r in steps])) / 2
    raw["fit_latency_s"] = fit_lat
    raw["allreduce_fit"] = {"alpha_s": a, "beta_s_per_B": b}
    base = yaml.safe_load((DATA / "clusters.yaml").read_text())["cpu-local"]
    sizes = f"{ar[0][0] // 1024}KiB..{ar[-1][0] / 2 ** 20:g}MiB"
    return dict(base, nvlink_GBps=round(link_bw / 1e9, 4), nvlink_latency_us=round(link_lat * 1e6, 2),
                nic_GBps=round(link_bw / 1e9, 4), nic_latency_us=round(link_lat * 1e6, 2),
                nvlink_efficiency=1.0, nic_efficiency=1.0,
                source=(f"parsim calibrate {date} on {host}{',' if quick else ''}{quick}: gloo loopback all_reduce, 2 "
                        f"processes, {sizes}, best of 3-7; fit t = {a * 1e6:.1f} us + n / {1 / b / 1e9:.3f} GB/s, "
                        "bandwidth mapped to the link through parsim.costs.network's own all-reduce price with "
                        "the cpu profile's step overheads in it; latency = half the raw TCP loopback round trip "
                        f"(the intercept left after the overheads would give {fit_lat * 1e6:.0f} us)"))


STEP_CASES = ("native", "ring", "hd", "tree", "ps", "ps-central")
EXECUTOR_CASES = STEP_CASES[1:]


def overhead_terms(algo: str, p: int, cores: int, nbytes: int = 4096) -> tuple[float, float]:
    """(X, Y): parsim's software-overhead price of `algo`'s all-reduce schedule on p ranks sharing
    one CPU of `cores` cores is o_step·X + o_msg·Y (``parsim.costs.network._overhead_of_step``
    summed over the steps, evaluated at (o_step, o_msg) = (1, 0) and (0, 1); exact where one of a
    step's two bounds (slowest rank, total over the cores) holds for both, which it does for these
    schedules but tree's and ps-central's unequal steps, where it is the nearest linear form)."""
    from parsim.costs.network import _overhead_of_step
    from parsim.schedules.collectives import build
    sched = build("allreduce", algo, p, nbytes, dedicated=False)
    cpu, cr = np.zeros(sched.nranks, dtype=np.int64), np.full(sched.nranks, float(cores))
    one, zero = np.ones(sched.nranks), np.zeros(sched.nranks)
    X = Y = 0.0
    for st in sched.steps:
        live = st.nbytes > 0
        X += _overhead_of_step(one, zero, cr, cpu, st.src[live], st.dst[live])
        Y += _overhead_of_step(zero, one, cr, cpu, st.src[live], st.dst[live])
    return X, Y


def step_overheads(runs: list[dict], cores: int | None = None) -> dict:
    """{executor_step_overhead_us, executor_message_overhead_us, native_step_overhead_us,
    per_point, rtt_us}: least squares on the relative error of (time - steps·RTT/2) against parsim's
    own overhead terms (``overhead_terms``: o_step·X + o_msg·Y, the p processes sharing `cores`
    cores) over the explicit points (one vs p-1 messages per rank and step separate the fixed from
    the per-message cost), and against steps·max(1, p/cores) over the native points (gloo's ring,
    no per-message part)."""
    cores = cores or os.cpu_count() or 1
    fit, points = {}, []
    rows, rhs = [], []
    for run in runs:
        for n in EXECUTOR_CASES:
            c = run["cases"].get(n)
            if c is None:
                continue
            w = 1.0 / c["time_s"]   # relative error: a 35 ms point does not outweigh a 0.5 ms one
            rows.append([v * w for v in overhead_terms(n, run["p"], cores)])
            rhs.append((c["time_s"] - c["steps"] * run["rtt_s"] / 2) * w)
            points.append(f"{n} p={run['p']}: {c['time_s'] * 1e6:.0f} us / {c['steps']} steps")
    A, b = np.array(rows), np.array(rhs)
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    if sol[1] < 0:     # no per-message cost resolved: the fixed part alone
        sol = np.array([max(0.0, float(A[:, 0] @ b / (A[:, 0] @ A[:, 0]))), 0.0])
    elif sol[0] < 0:   # no fixed cost resolved: the per-message part alone
        sol = np.array([0.0, max(0.0, float(A[:, 1] @ b / (A[:, 1] @ A[:, 1])))])
    fit["executor_step_overhead_us"] = round(float(sol[0]) * 1e6, 1)
    fit["executor_message_overhead_us"] = round(float(sol[1]) * 1e6, 1)
    num = den = 0.0
    for run in runs:
        c = run["cases"]["native"]
        w = 1.0 / c["time_s"]
        x = c["steps"] * max(1.0, run["p"] / cores) * w
        num += x * (c["time_s"] - c["steps"] * run["rtt_s"] / 2) * w
        den += x ** 2
        points.append(f"native p={run['p']}: {c['time_s'] * 1e6:.0f} us / {c['steps']} steps")
    fit["native_step_overhead_us"] = round(max(0.0, num / den) * 1e6, 1)
    fit["per_point"] = points
    fit["rtt_us"] = [round(r["rtt_s"] * 1e6, 1) for r in runs]
    return fit


def efficiency_curve(points, peak) -> list:
    """[[size, fraction of peak]] rounded, clipped to (0, 1]."""
    return [[float(f"{s:.3g}"), round(min(1.0, max(1e-4, v / peak)), 4)] for s, v in points]


def fit_alpha_beta(points) -> tuple[float, float]:
    """Least-squares t = alpha + beta·n over [(n, t)], both clipped to >= 0 (seconds, s/byte)."""
    n = np.array([p[0] for p in points], dtype=float)
    t = np.array([p[1] for p in points], dtype=float)
    beta, alpha = np.polyfit(n, t, 1)
    return max(float(alpha), 0.0), max(float(beta), 1e-15)


def link_from_fit(alpha_s: float, beta_s_per_B: float, nproc: int = 2) -> tuple[float, float]:
    """(bandwidth bytes/s, latency s) of the cpu-local link that makes parsim's own pricing of a
    `nproc`-rank all-reduce give alpha + beta·n. Parsim's price is alpha = a_fixed + a_lat·latency
    and beta = b_fixed + b_bw/bandwidth (the fixed parts: e.g. the reduction priced on the CPU);
    two pricings at different link parameters give those four numbers, then solve."""
    import tempfile

    from parsim.costs.network import collective_coeffs
    from parsim.topology import load_cluster
    base = yaml.safe_load((DATA / "clusters.yaml").read_text())["cpu-local"]

    def coeffs(gbps, lat_us):
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "cpu-local-probe.yaml"
            f.write_text(yaml.safe_dump(dict(base, nvlink_GBps=gbps, nvlink_latency_us=lat_us, nic_GBps=gbps,
                                             nic_latency_us=lat_us, nvlink_efficiency=1.0, nic_efficiency=1.0)))
            return collective_coeffs(load_cluster(str(f), nproc), "allreduce", "native", tuple(range(nproc)))
    a1, b1 = coeffs(1.0, 1.0)
    a2, b2 = coeffs(2.0, 2.0)
    a_lat = a2 - a1                      # seconds of alpha per us of link latency
    a_fixed = a1 - a_lat
    b_bw = 2.0 * (b1 - b2)               # s/byte at 1 GB/s from the link term
    b_fixed = b1 - b_bw
    lat_us = max(0.0, (alpha_s - a_fixed) / a_lat) if a_lat > 0 else 0.0
    gbps = b_bw / (beta_s_per_B - b_fixed) if beta_s_per_B > b_fixed else 1e3
    return float(gbps * 1e9), float(lat_us * 1e-6)


class _profile_in_effect:
    """Price with `profile` as the ``cpu`` device (a temporary devices.local file) inside the block."""

    def __init__(self, profile: dict):
        self.profile = profile

    def __enter__(self):
        import tempfile

        from parsim import hardware
        self.dir = tempfile.TemporaryDirectory()
        f = Path(self.dir.name) / "devices.local.yaml"
        f.write_text(yaml.safe_dump({"cpu": self.profile}))
        self.old = os.environ.get("PARSIM_DEVICES_LOCAL")
        os.environ["PARSIM_DEVICES_LOCAL"] = str(f)
        hardware._catalog.cache_clear()

    def __exit__(self, *exc):
        from parsim import hardware
        if self.old is None:
            os.environ.pop("PARSIM_DEVICES_LOCAL", None)
        else:
            os.environ["PARSIM_DEVICES_LOCAL"] = self.old
        hardware._catalog.cache_clear()
        self.dir.cleanup()


HEADER = ("# Written by `parsim calibrate`; measured on this machine (see source). Re-run to refresh.\n"
          "# Loaded by parsim from here (PARSIM_HOME / XDG_DATA_HOME/parsim / ~/.local/share/parsim).\n")


def write_results(out_dir, profile: dict, cluster: dict | None) -> list[Path]:
    """Write ``devices.yaml`` (``{cpu: profile}``) and, when measured, ``cpu-local.yaml`` into `out_dir`
    atomically (parsim.outputs.write_atomic: a reader never sees half a file). Returns the paths."""
    from parsim.outputs import write_atomic
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / DEVICES_FILE]
    write_atomic(paths[0], HEADER + yaml.safe_dump({"cpu": profile}, sort_keys=False, default_flow_style=None),
                 what="profile")
    if cluster:
        paths.append(d / CLUSTER_FILE)
        write_atomic(paths[1], HEADER + yaml.safe_dump(cluster, sort_keys=False, default_flow_style=None),
                     what="profile")
    return paths


def read_profile(path) -> dict | None:
    """The ``cpu`` entry of a device-profile file (through the one safe reader, parsim.fileio), or None."""
    from parsim.fileio import read_user_file
    d = read_user_file(path, "devices", "yaml")
    return d.get("cpu") if isinstance(d, dict) else None


def busy_warning(load_1min: float, cores: int, own_processes: int = 1) -> str | None:
    """A one-line warning when other work shared the CPUs while calibration measured (the 1-minute
    load average, less this calibration's own `own_processes`, above half of `cores`), else None.
    Measured under contention, every rate comes out too low and predictions too slow (a --quick run
    at load 3 on 2 cores gave matmul_sustained_fraction 0.05)."""
    others = max(0.0, float(load_1min) - own_processes)
    if cores <= 0 or others <= 0.5 * cores:
        return None
    return (f"warning: load average {load_1min:.1f} on {cores} cores while measuring: other work shared the CPUs, "
            f"so the measured rates are likely too low; calibrate again on an idle machine")
