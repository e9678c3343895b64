"""`parsim validate STUDY.yaml`: run every point of a study through the backend, record each.

Points (parsim.study) run one after another — training plans on local CPU ranks or GPUs,
collective benchmarks (inside the emulated network the study names), device measurements —
each beside its prediction. Every finished point is appended to ``<out>/results.jsonl`` at
once (parsim.results: one line, fsync), with the machine, versions and profile it ran with.
A point that fails (rank crash, out of memory, timeout) is recorded with its cause and the
study goes on. Killed (Ctrl-C, SIGKILL)? ``--resume`` runs only the points not yet recorded.
At the end ``parsim report`` renders ``<out>/report.md`` and ``<out>/report.html``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path

from parsim.errors import ParsimError


def add_arguments(p):
    p.add_argument("study", help="study file (YAML), e.g. studies/cpu/run_vs_predict.yaml")
    p.add_argument("--out", help="results directory (default results/<study name>); $OUT works too")
    p.add_argument("--resume", action="store_true", help="finish a study whose results exist: run only the "
                   "points not recorded yet")
    p.add_argument("--fresh", action="store_true", help="discard existing results and start again")
    p.add_argument("--tiny", action="store_true", help="apply the study's `tiny:` overrides (small models, few steps, "
                   "CPU ranks): the dry run CI keeps GPU studies alive with")
    p.add_argument("--no-report", action="store_true", help="do not render the report at the end")
    p.add_argument("--list", action="store_true", help="print the study's points and exit")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:120] or "point"


def _prediction_target(settings):
    """(device profile, cluster) the training points of a study with these settings are predicted on."""
    s = settings
    if s["backend"] == "nccl":
        from parsim.commands.run import _device_profile
        prof, cl = _device_profile("nccl")
    else:
        from parsim.calibrate import local_cluster
        prof, cl = "cpu", local_cluster()
    return prof, s.get("cluster") or cl


@contextlib.contextmanager
def measured_profile(path: Path | None):
    """Device profiles read from `path` (a measured profile) instead of the calibration home's devices.yaml, for the
    duration; caches of profiles and clusters are dropped on entry and exit."""
    import importlib
    hardware = importlib.import_module("parsim.hardware")
    predict = importlib.import_module("parsim.predict")     # the module (parsim.predict is the function)
    if path is None or not Path(path).exists():
        yield False
        return
    old = os.environ.get("PARSIM_DEVICES_LOCAL")
    os.environ["PARSIM_DEVICES_LOCAL"] = str(path)
    hardware._catalog.cache_clear()
    predict._cluster_cached.cache_clear()
    try:
        yield True
    finally:
        if old is None:
            os.environ.pop("PARSIM_DEVICES_LOCAL", None)
        else:
            os.environ["PARSIM_DEVICES_LOCAL"] = old
        hardware._catalog.cache_clear()
        predict._cluster_cached.cache_clear()


def _predict_train(spec, cluster):
    from parsim.plan import Plan
    from parsim.predict import predict
    plan = Plan(**spec["plan"])
    return predict(spec["model"], cluster, plan, gpus=plan.gpus)


def _profile_info(name):
    from parsim.hardware import get_device, profile_file
    try:
        d = get_device(name)
        return {"name": name, "source": d.source, "file": profile_file(name)}
    except ParsimError:
        return {"name": name}


def run(args) -> int:
    from parsim import results as R
    from parsim.study import load_study
    study = load_study(args.study, tiny=args.tiny)
    # what the torch GPT cannot build (latent attention, windows, ...): refused before any rank is spawned, as `run`
    # refuses it (trial 2026-11-30: a study point `run` refuses at once launched its ranks first)
    from backends.torchdist.buildable import check_buildable
    from parsim.model import load_model
    for p in study.points:
        if p.kind == "train":
            try:
                check_buildable(load_model(p.spec["model"]))
            except ParsimError as e:
                raise ParsimError(f"{p.id}: {e}") from None
    if args.list:
        for p in study.points:
            print(p.id)
        return 0
    if args.resume and args.fresh:
        raise ParsimError("--resume and --fresh contradict each other: --resume finishes the recorded study, "
                          "--fresh discards it; give one")
    out = Path(args.out or os.environ.get("OUT") or Path("results") / slug(study.name))
    if args.out or os.environ.get("OUT"):   # a directory the user named: its parent must exist (parsim.outputs)
        from parsim.outputs import make_output_dir
        make_output_dir(out, "--out")
    else:                                   # the default results/<study>: ours to create
        out.mkdir(parents=True, exist_ok=True)
    store = out / "results.jsonl"
    if store.exists() and store.stat().st_size and not (args.resume or args.fresh):
        raise ParsimError(f"{store} exists: --resume to finish that study, --fresh to start it again, or another --out")
    if args.fresh and store.exists():
        store.unlink()
    cut = R.repair(store)
    done = R.latest(R.read(store)) if store.exists() else {}
    others = sorted({str(r.get("study")) for r in done.values()} - {study.name})
    if others:
        raise ParsimError(f"{store} holds results of study {others[0]!r}, not {study.name!r}: use another --out")
    if study.where == "gpu" and not args.tiny:
        import torch
        if not torch.cuda.is_available():
            raise ParsimError(f"study {study.name} runs where: gpu but torch {torch.__version__} sees no CUDA device; "
                              "--tiny runs its CPU dry run")
    pending = [p for p in study.points if p.id not in done]
    print(f"study {study.name}: {len(study.points)} points, {len(done)} recorded, {len(pending)} to run; results {store}"
          + (f" (cut {cut} bytes of a point interrupted mid-write)" if cut else ""), file=sys.stderr, flush=True)
    ctx = {"machine": R.machine_info(), "versions": R.versions(), "study": study.name, "out": out}
    prof, cluster = _prediction_target(study.settings)
    ctx.update(profile=prof, cluster=cluster)
    try:
        with _progress(len(study.points), len(done)) as bar:
            for net, pts in _groups(pending):
                with _network(study, net) as emu:
                    for rec in _run_points(study, pts, ctx, emu, bar):
                        R.append(store, rec)
                        bar.finished(rec)
    except KeyboardInterrupt:
        n = len(R.latest(R.read(store))) if store.exists() else 0
        print(f"study {study.name}: interrupted with {n} of {len(study.points)} points recorded; "
              f"`parsim validate {args.study} --out {out} --resume` finishes it", file=sys.stderr)
        raise
    recs = R.read(store)
    print(f"study {study.name}: {sum(r['status'] == 'ok' for r in recs)} ok, "
          f"{sum(r['status'] != 'ok' for r in recs)} failed of {len(study.points)}; {store}", file=sys.stderr)
    if not args.no_report:
        from parsim.reportgen import write_report
        paths = write_report([store], out, formats=("md", "html"), title=f"Study {study.name}")
        print("report: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def _groups(points):
    """Points grouped by the network they run in (device points first, then in study order)."""
    order = sorted(points, key=lambda p: p.kind != "device")
    groups = {}
    for p in order:
        groups.setdefault(p.network, []).append(p)
    return list(groups.items())


@contextlib.contextmanager
def _network(study, net):
    if net is None:
        yield None
        return
    from backends.study import network
    with network(study.networks[net]) as emu:
        yield emu


def _base_record(study, point, ctx, t0):
    return {"study": study.name, "id": point.id, "kind": point.kind, "point": point.spec | {"network": point.network},
            "machine": ctx["machine"], "versions": ctx["versions"], "tiny": study.tiny,
            "network_spec": study.networks.get(point.network) if point.network else None,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": time.monotonic() - t0,
            "loadavg_1_5_15": list(os.getloadavg())}     # at the end of the point: contention shows here


def _failed(rec, cause):
    from parsim.results import classify_failure
    rec.update(status="failed", cause=cause, failure=classify_failure(cause), summary={})
    return rec


def _run_points(study, pts, ctx, emu, bar):
    from backends.study import PointFailed
    i = 0
    while i < len(pts):
        p = pts[i]
        if p.kind == "collective":      # consecutive collective points of one entry: one process group
            j = i
            while j < len(pts) and pts[j].kind == "collective" and _coll_key(pts[j]) == _coll_key(p):
                j += 1
            batch, i = pts[i:j], j
            bar.start(f"{len(batch)} collective point(s): {p.id}")
            yield from _collectives(study, batch, ctx, emu)
            continue
        i += 1
        bar.start(p.id)
        t0 = time.monotonic()
        rec = _base_record(study, p, ctx, t0)
        try:
            if p.kind == "device":
                rec = _device(study, p, ctx, rec)
            else:
                rec = _train(study, p, ctx, emu, rec)
            rec["status"] = "ok"
        except PointFailed as e:
            rec = _failed(rec, str(e))
        except ParsimError as e:     # e.g. a plan the backend cannot run: recorded, the study goes on
            rec = _failed(rec, f"error: {e}")
        rec["wall_s"] = time.monotonic() - t0
        yield rec


def _coll_key(p):
    s = p.spec
    return (p.network, s["op"], s["repeats"], s["warmup"], s["launches"], s["min_time_s"], s["max_repeats"], s.get("nproc"))


def _collectives(study, batch, ctx, emu):
    from backends.study import PointFailed, run_collectives
    t0 = time.monotonic()
    algos = list(dict.fromkeys(p.spec["algo"] for p in batch))
    sizes = list(dict.fromkeys(p.spec["size_B"] for p in batch))
    try:
        pts = run_collectives(batch[0].spec["op"], algos, sizes, batch[0].spec, emu)
    except PointFailed as e:
        for p in batch:
            yield _failed(_base_record(study, p, ctx, t0), str(e))
        return
    by = {(q["algo"], q["size_B"]): q for q in pts}
    profile = {"name": "cpu", "link_probes": getattr(emu, "probes", None)} if emu else _profile_info("cpu")
    for p in batch:
        rec = _base_record(study, p, ctx, t0)
        q = by.get((p.spec["algo"], p.spec["size_B"]))
        if q is None:
            yield _failed(rec, f"error: the benchmark returned no point for {p.spec['algo']} {p.spec['size_B']} B")
            continue
        rec.update(status="ok" if q["correct"] else "failed", measured=q, predicted=q.pop("predicted"), profile=profile,
                   summary={"metric": "time_s", "measured": q["median_s"], "spread": [q["min_s"], q["max_s"]],
                            "predicted": q["predicted_s"], "error": q["error"]})
        if not q["correct"]:
            rec.update(cause="error: the collective's result was wrong", failure="error")
        yield rec


def _train(study, p, ctx, emu, rec):
    from backends.study import run_train
    from parsim.compare import rel_error
    spec = dict(p.spec)
    if spec.pop("trace", False):
        (ctx["out"] / "traces").mkdir(exist_ok=True)   # the study's own layout (out/traces/<point>)
        spec["trace_dir"] = str((ctx["out"] / "traces" / slug(p.id)).resolve())
    measured = run_train(spec, study.settings, ctx["profile"], emu)
    mfile = _measured_profile_file(study, ctx)
    predicted = catalog = None
    cluster = ctx["cluster"]
    try:
        if emu is not None:      # predicted on the emulated network itself, with its probed links
            from backends.study import emulated_cluster
            cluster = emulated_cluster(emu, measured.gpus)
        catalog = _predict_train(spec, cluster)
        with measured_profile(mfile) as used:
            predicted = _predict_train(spec, cluster) if used else catalog
            profile = _profile_info(ctx["profile"])
    except ParsimError as e:
        profile = _profile_info(ctx["profile"])
        rec["prediction_error"] = str(e)
    if spec.get("trace_dir"):     # the pipeline ops of the traced step, kept in the record (the traces are MBs)
        from parsim.reportgen import measured_pipeline_ops
        rec["pipeline_ops"] = [list(o) for o in measured_pipeline_ops(spec["trace_dir"])]
    lo_hi = measured.spread.get("step_time_s") or [None, None]
    pt = predicted.step_time_s if predicted else None
    if emu is not None:          # the links it was predicted on: a stored point can be re-predicted (repredict)
        profile = dict(profile, link_probes=getattr(emu, "probes", None))
    rec.update(measured=measured.to_dict(), predicted=predicted.to_dict() if predicted else None,
               predicted_catalog=catalog.to_dict() if (catalog and mfile and mfile.exists()) else None,
               profile=profile, cluster=ctx["cluster"] if emu is None else cluster.name, trace_dir=spec.get("trace_dir"),
               summary={"metric": "step_time_s", "measured": measured.step_time_s, "spread": lo_hi, "predicted": pt,
                        "error": rel_error(measured.step_time_s, pt)})
    return rec


def repredict(record: dict, records=(), store_dir=None) -> float | None:
    """Today's prediction of a stored point's headline number (its ``summary.metric``: step_time_s
    of a training point, time_s of a collective), priced as `parsim validate` priced it when it ran:
    a training plan on the prediction target of its backend (``_prediction_target``: the calibrated
    cpu-local and the ``cpu`` profile for gloo ranks; the record's cluster and the measured profile
    beside the store for nccl) or, inside an emulated network, on that network's graph with the
    link probes the study stored; a collective as ``backends.torchdist.bench.predict_point`` prices
    it. Nothing is measured and nothing is created (the emulated network is a plan only).

    `records`: the other records of the same store, whose probes stand in for a training point
    recorded before training points kept their own (the same network is set up once per study run);
    `store_dir`: the store's directory, where a GPU study keeps its measured profile.
    Returns None for a point without a prediction (a device measurement, a failed point); raises
    ParsimError when today's model cannot price the point."""
    if record.get("status") != "ok" or record.get("kind") not in ("train", "collective"):
        return None
    point = record["point"]
    net = point.get("network")
    emu = None
    if net:
        from backends.study import planned_emulation
        emu = planned_emulation(record["network_spec"], _stored_probes(record, records))
    if record["kind"] == "collective":
        from backends.study import emulated_state
        from backends.torchdist.bench import predict_point
        m = record["measured"]
        _, _, pred = predict_point(m["op"], m["algo"], m["world"], m["size_B"],
                                   state=emulated_state(emu) if emu is not None else None)
        return float(pred["time_s"])
    spec = {"model": point["model"], "plan": point["plan"]}
    measurement = record["measured"].get("measurement") or {}
    backend = measurement.get("backend", "gloo")
    if emu is not None:
        from backends.study import emulated_cluster
        return _predict_train(spec, emulated_cluster(emu, record["measured"]["gpus"])).step_time_s
    cluster = record.get("cluster") or ""
    if backend != "nccl" and (not cluster or "/" in cluster or cluster.endswith((".yaml", ".yml", ".json"))):
        cluster = _prediction_target({"backend": backend})[1]   # a calibration file of the machine it ran on
    prof = (record.get("profile") or {}).get("name")
    mfile = Path(store_dir) / f"{prof}.measured.yaml" if (store_dir and prof and backend == "nccl") else None
    with measured_profile(mfile):
        return _predict_train(spec, cluster).step_time_s


def _stored_probes(record, records):
    probes = (record.get("profile") or {}).get("link_probes")
    if probes is not None:
        return probes
    net = record["point"].get("network")
    found = {json.dumps(r["profile"]["link_probes"], sort_keys=True) for r in records
             if r["point"].get("network") == net and (r.get("profile") or {}).get("link_probes") is not None}
    if len(found) != 1:
        raise ParsimError(f"point {record['id']!r}: no stored link probes of network {net} to re-predict it on "
                          f"({len(found)} distinct sets in the store; expected one)")
    return json.loads(found.pop())


def _measured_profile_file(study, ctx):
    dev = [p for p in study.points if p.kind == "device"]
    return (ctx["out"] / f"{dev[0].spec['profile']}.measured.yaml") if dev else None


def _device(study, p, ctx, rec):
    import yaml

    from backends.study import measure_device
    from parsim.devfit import fit_profile
    from parsim.hardware import _catalog
    from parsim.report import write_atomic
    spec = p.spec
    meas = measure_device(spec)
    name = spec["profile"]
    base = _catalog().get(name)
    if base is None:
        raise ParsimError(f"device.profile {name!r}: not in the catalog (parsim/data/devices.yaml)")
    when = time.strftime("%Y-%m-%d", time.gmtime())
    prof = fit_profile(base, meas, name, when=f"{when} by `parsim validate {study.path}`")
    path = ctx["out"] / f"{name}.measured.yaml"
    write_atomic(path, f"# measured device profile ({name}); use with PARSIM_DEVICES_LOCAL={path}\n"
                 + yaml.safe_dump({name: prof}, sort_keys=False))
    best = max(g["flops_per_s"] for g in meas["gemm"])
    peak = float(base["peak_TFLOPs"][meas["dtype"]]) * 1e12
    rec.update(measured=meas, predicted=None, profile={"name": name, "file": str(path), "fitted": prof},
               summary={"metric": "gemm_best_fraction_of_peak", "measured": best / peak, "spread": [None, None],
                        "predicted": max(e for _, e in base["matmul_efficiency"]), "error": None})
    return rec


# -- progress ------------------------------------------------------------------------------

class _Bar:
    def __init__(self, prog, task):
        self.prog, self.task = prog, task

    def start(self, what):
        self.prog.update(self.task, description=what[:60])

    def finished(self, rec):
        s = rec.get("summary") or {}
        if rec["status"] == "ok" and s.get("measured") is not None:
            err = s.get("error")
            msg = (f"ok     {rec['id']}: measured {s['measured']:.4g}, predicted "
                   + (f"{s['predicted']:.4g}" if s.get("predicted") is not None else "-")
                   + (f" ({err:+.0%})" if err is not None else ""))
        else:
            msg = f"FAILED {rec['id']}: {rec.get('failure')}: {rec.get('cause')}"
        self.prog.console.print(msg, highlight=False, markup=False)
        self.prog.advance(self.task)


@contextlib.contextmanager
def _progress(total, done):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    console = Console(stderr=True)
    if not console.is_terminal:      # logs and pipes: one line per point, not wrapped at 80 columns
        console = Console(stderr=True, width=200)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False) as prog:
        task = prog.add_task("starting", total=total, completed=done)
        yield _Bar(prog, task)
