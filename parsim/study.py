"""A study file: what `parsim validate` runs, declared as data (YAML).

    name: cpu-run-vs-predict                # required; names the results
    where: local                            # local (CPU ranks, gloo) | gpu (nccl) | netem (emulated hosts)
    cluster: cpu-local                      # prediction cluster (default: calibrated cpu-local / dgx-<gpu>)
    steps: 8                                # timed training steps per point (default 8)
    warmup: 3                               # steps dropped before the median (default 3)
    timeout_s: 600                          # per point; a point past it is recorded as failed (timeout)
    networks:                               # where: netem only; name -> emulated cluster
      A: {preset: switch, hosts: 4, link: 200Mbit, ranks_per_host: 1}
    device: {profile: h200, gemm: [[4096, 4096, 4096], ...], hbm_MiB: [64, 1024]}   # where: gpu: measure it
    train:                                  # training points
      - model: gpt-small                    # preset or ModelSpec file (relative to the study file)
        plan: {dp: 2, micro_batch: 2, global_batch: 8, grad_sync: ring}
        sweep: {recompute: [none, full]}    # optional: the cartesian product over plan fields
    collectives:                            # collective benchmarks: op x algo x size
      - {network: A, op: allreduce, algo: [ring, tree], size: [4KiB, 1MiB], repeats: 3, launches: 3,
         min_time_s: 1.5, max_repeats: 60}
    tiny: {models: {llama-1b.yaml: gpt-tiny}, steps: 2, warmup: 1, device: {...}}  # --tiny: the CPU dry run

``load_study(path)`` checks every key (a malformed file is one ParsimError naming the key and
what was expected: a missing or unknown key, a wrong type, an unknown model, cluster, device
profile or algorithm, a plan the rule book rejects for its model — naming the swept value at
fault, e.g. ``s.yaml.train[0].sweep.recompute[1]``) before anything runs, and expands the file
to a list of points, each with a stable ``id``: the
results store (parsim.results) is keyed by it, so a resumed study runs each point once.
This module is pure: it never imports torch or ``backends``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path


from parsim import limits
from parsim.errors import ParsimError

WHERE = ("local", "gpu", "netem")
TOP_KEYS = {"name", "description", "where", "cluster", "backend", "steps", "warmup", "timeout_s", "networks",
            "device", "train", "collectives", "tiny", "threads"}
TRAIN_KEYS = {"model", "plan", "sweep", "network", "steps", "warmup", "timeout_s", "label", "fault", "trace"}
COLL_KEYS = {"network", "nproc", "op", "algo", "size", "repeats", "warmup", "launches", "min_time_s", "max_repeats", "timeout_s"}
NET_KEYS = {"preset", "hosts", "link", "ranks_per_host", "servers", "oversubscription"}
DEVICE_KEYS = {"profile", "gemm", "hbm_MiB", "dtype", "timeout_s"}
TINY_KEYS = {"models", "steps", "warmup", "device", "plan"}


@dataclass
class Point:
    id: str                       # stable, unique in the study: the results store's key
    kind: str                     # train | collective | device
    spec: dict                    # what to run (JSON-able)
    network: str | None = None    # netem: the emulated cluster it runs in


@dataclass
class Study:
    name: str
    where: str
    path: Path
    settings: dict                # cluster, backend, steps, warmup, timeout_s, threads
    networks: dict = field(default_factory=dict)
    points: list = field(default_factory=list)
    description: str = ""
    tiny: bool = False


def _bad(where: str, expected: str, got=None) -> ParsimError:
    shown = "" if got is None else f" (got {got!r})"
    return ParsimError(f"{where}: expected {expected}{shown}")


def _keys(d, allowed, where):
    if not isinstance(d, dict):
        raise _bad(where, "a mapping", d)
    extra = sorted(set(d) - allowed)
    if extra:
        raise ParsimError(f"{where}.{extra[0]}: unknown key; expected one of {', '.join(sorted(allowed))}")


# The bounds the command-line flags enforce, for the same settings in a study file (trial 2026-11-30: a study took
# steps 9,999,999,999, hosts 100,000 and timeout_s .nan, which crashed its results writer with a traceback)
INT_MAX = {"steps": limits.MAX_STEPS, "warmup": limits.MAX_STEPS, "hosts": limits.MAX_EMULATED_HOSTS,
           "ranks_per_host": limits.MAX_RANKS_PER_HOST, "servers": limits.MAX_EMULATED_HOSTS, "threads": limits.MAX_THREADS}


def _pos_int(d, key, where, default=None, minimum=1):
    v = d.get(key, default)
    if v is None:
        return None
    top = INT_MAX.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _bad(f"{where}.{key}", f"an integer >= {minimum}", v)
    if top is not None and v > top:
        raise _bad(f"{where}.{key}", f"an integer <= {top:,} (parsim.limits, as the command-line flag)", v)
    return v


def _pos_num(d, key, where, default=None, maximum=limits.MAX_OP_TIME_S):
    v = d.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 or v > maximum:
        raise _bad(f"{where}.{key}", f"a positive finite number (at most {maximum:,g})", v)
    return float(v)


def _nonneg_num(d, key, where, default=0.0):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise _bad(f"{where}.{key}", "a number >= 0", v)
    return float(v)


def _list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _entries(raw, key, where, what):
    """The list under `key` (absent or empty: none); anything but a list is an error naming the key."""
    v = raw.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise _bad(f"{where}.{key}", f"a list of {what}", v)
    return v


def _mapping(d, key, where, what):
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad(f"{where}.{key}", f"a mapping of {what}", v)
    return v


def load_study(path, tiny: bool = False) -> Study:
    """Read and check a study file; expand it to points. ``tiny`` applies its ``tiny:`` overrides
    (smaller models, fewer steps: the CPU dry run CI keeps the GPU study alive with)."""
    path = Path(path)
    from parsim.fileio import read_user_file
    raw = read_user_file(path, "study", fmt="yaml")   # regular file, size, nesting, no aliases or duplicate keys
    where = path.name
    _keys(raw, TOP_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _bad(f"{where}.name", "a non-empty string naming the study", name)
    w = raw.get("where", "local")
    if w not in WHERE:
        raise _bad(f"{where}.where", f"one of {', '.join(WHERE)}", w)
    tiny_o = raw.get("tiny") or {}
    _keys(tiny_o, TINY_KEYS, f"{where}.tiny")
    tmodels = _mapping(tiny_o, "models", f"{where}.tiny", "model -> the tiny model that stands in for it")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tmodels.items()):
        raise _bad(f"{where}.tiny.models", "a mapping of model names or files to model names or files", tmodels)
    _mapping(tiny_o, "plan", f"{where}.tiny", "plan fields")
    if tiny_o.get("device") is not None and not isinstance(tiny_o["device"], dict):
        raise _bad(f"{where}.tiny.device", "a mapping of device-measurement keys", tiny_o["device"])
    settings = {
        "cluster": raw.get("cluster"),
        "backend": raw.get("backend") or ("nccl" if w == "gpu" else "gloo"),
        "steps": _pos_int(raw, "steps", where, 8),
        "warmup": _pos_int(raw, "warmup", where, 3, minimum=0),
        "timeout_s": _pos_num(raw, "timeout_s", where, 600.0),
        "threads": _pos_int(raw, "threads", where, 1),
    }
    if settings["backend"] not in ("gloo", "nccl"):
        raise _bad(f"{where}.backend", "gloo or nccl", settings["backend"])
    if settings["cluster"] is not None:
        settings["cluster"] = _cluster(settings["cluster"], f"{where}.cluster", path)
    if tiny:
        settings["steps"] = _pos_int(tiny_o, "steps", f"{where}.tiny", settings["steps"])
        settings["warmup"] = _pos_int(tiny_o, "warmup", f"{where}.tiny", settings["warmup"], minimum=0)
        settings["backend"] = "gloo"
    if settings["warmup"] >= settings["steps"]:
        raise _bad(f"{where}.warmup", f"fewer than steps ({settings['steps']})", settings["warmup"])
    networks = {}
    if w == "netem":
        nets = raw.get("networks")
        if not isinstance(nets, dict) or not nets:
            raise _bad(f"{where}.networks", "a mapping name -> {preset, hosts, link, ...} (where: netem)", nets)
        for n, spec in nets.items():
            _keys(spec, NET_KEYS, f"{where}.networks.{n}")
            if spec.get("preset", "switch") not in ("switch", "racks", "ps"):
                raise _bad(f"{where}.networks.{n}.preset", "switch, racks or ps", spec.get("preset"))
            _pos_int(spec, "hosts", f"{where}.networks.{n}", 2, minimum=2)
            _pos_int(spec, "ranks_per_host", f"{where}.networks.{n}", 1)
            _pos_int(spec, "servers", f"{where}.networks.{n}", None)
            _pos_num(spec, "oversubscription", f"{where}.networks.{n}", None, maximum=limits.MAX_OVERSUBSCRIPTION)
            link = spec.get("link")
            try:
                from parsim.units import parse_rate
                parse_rate(link)
            except (ParsimError, TypeError, ValueError):
                raise _bad(f"{where}.networks.{n}.link", "a rate such as 200Mbit or 1Gbit", link) from None
            networks[str(n)] = dict(spec)
    elif raw.get("networks"):
        raise _bad(f"{where}.networks", "no networks unless where: netem", "networks")
    study = Study(name=name.strip(), where=w, path=path, settings=settings, networks=networks,
                  description=str(raw.get("description", "")), tiny=tiny)
    dev = raw.get("device")
    if dev is not None:
        if tiny and "device" in tiny_o:
            dev = {**dev, **tiny_o["device"]}
        study.points += _device_points(dev, f"{where}.device", w, tiny)
    for i, entry in enumerate(_entries(raw, "train", where, "training points ({model, plan, sweep, ...})")):
        study.points += _train_points(entry, f"{where}.train[{i}]", study, tiny_o if tiny else {})
    for i, entry in enumerate(_entries(raw, "collectives", where, "collective benchmarks ({op, algo, size, ...})")):
        study.points += _collective_points(entry, f"{where}.collectives[{i}]", study)
    if not study.points:
        raise _bad(where, "at least one point under train, collectives or device", "no points")
    seen = {}
    for p in study.points:
        if p.id in seen:
            raise ParsimError(f"{where}: two points have the id {p.id!r}: give one a `label`")
        seen[p.id] = p
    return study


def _device_points(dev, where, w, tiny):
    _keys(dev, DEVICE_KEYS, where)
    if w != "gpu" and not tiny:
        raise _bad(where, "device measurements only where: gpu", w)
    prof = dev.get("profile")
    if not isinstance(prof, str):
        raise _bad(f"{where}.profile", "the device profile name the measurement replaces (e.g. h200)", prof)
    shapes = dev.get("gemm") or []
    if not shapes or not all(isinstance(s, (list, tuple)) and len(s) == 3 and all(isinstance(x, int) and x > 0 for x in s)
                             for s in shapes):
        raise _bad(f"{where}.gemm", "a list of [m, n, k] GEMM shapes (positive integers)", shapes)
    hbm = dev.get("hbm_MiB") or []
    if not hbm or not all(isinstance(x, (int, float)) and x > 0 for x in hbm):
        raise _bad(f"{where}.hbm_MiB", "a list of buffer sizes in MiB", hbm)
    from parsim.hardware import device_names
    if prof not in device_names():
        raise _bad(f"{where}.profile", f"a device profile of the catalog ({', '.join(device_names())})", prof)
    dtype = dev.get("dtype", "bf16")
    if dtype not in ("bf16", "fp16", "fp32"):
        raise _bad(f"{where}.dtype", "bf16, fp16 or fp32 (the GEMMs' dtype)", dtype)
    spec = {"profile": prof, "gemm": [list(s) for s in shapes], "hbm_MiB": [float(x) for x in hbm],
            "dtype": dtype, "timeout_s": _pos_num(dev, "timeout_s", where, 240.0)}
    return [Point(id=f"device {prof}", kind="device", spec=spec)]


def _train_points(entry, where, study, tiny_o):
    _keys(entry, TRAIN_KEYS, where)
    model = entry.get("model")
    if not isinstance(model, str):
        raise _bad(f"{where}.model", "a model preset name or a ModelSpec file", model)
    model = (tiny_o.get("models") or {}).get(model, model)
    if model.endswith((".yaml", ".yml", ".json")) and not Path(model).is_absolute():
        model = str((study.path.parent / model).resolve())
    from parsim.model import preset_names
    if model.endswith((".yaml", ".yml", ".json")) and not Path(model).is_file():
        raise _bad(f"{where}.model", "a model preset name or an existing ModelSpec file", model)
    if not model.endswith((".yaml", ".yml", ".json")) and model not in preset_names():
        from parsim.errors import unknown_preset
        raise ParsimError(f"{where}.model: " + unknown_preset("model", model, preset_names(), "parsim presets models"))
    plan = dict(_mapping(entry, "plan", where, "plan fields"))
    plan.update(tiny_o.get("plan") or {})
    sweep = entry.get("sweep") or {}
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise _bad(f"{where}.sweep", "a mapping plan field -> non-empty list of values", sweep)
    if entry.get("trace") is not None and not isinstance(entry["trace"], bool):
        raise _bad(f"{where}.trace", "true or false", entry["trace"])
    if entry.get("fault") is not None and not isinstance(entry["fault"], str):
        raise _bad(f"{where}.fault", "a fault string such as '1:1:kill' (rank:step:kind)", entry["fault"])
    if study.where != "netem" and entry.get("network") is not None:
        raise _bad(f"{where}.network", "no network unless where: netem", entry["network"])
    from parsim.plan import Plan
    fields = set(Plan.__dataclass_fields__)
    for k in list(plan) + list(sweep):
        if k not in fields:
            raise ParsimError(f"{where}.plan.{k}: unknown plan field; expected one of {', '.join(sorted(fields))}")
    net = entry.get("network")
    if study.where == "netem":
        net = _network(net, where, study)
    out = []
    keys = list(sweep)
    from parsim.model import load_model
    spec_model = load_model(model)
    for combo in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
        p = dict(plan, **dict(zip(keys, combo)))
        plan_obj = _checked_plan(p, plan, keys, combo, sweep, study, where, spec_model)
        label = entry.get("label")
        pid = f"train {Path(model).stem if '/' in model else model} {plan_obj.label()}"
        if label:
            pid += f" [{label}{'' if not keys else ' ' + ','.join(f'{k}={v}' for k, v in zip(keys, combo))}]"
        if net:
            pid = f"{net}: {pid}"
        out.append(Point(id=pid, kind="train", network=net, spec={
            "model": model, "plan": plan_obj.to_dict(),
            "steps": _pos_int(entry, "steps", where, study.settings["steps"]) if not study.tiny else study.settings["steps"],
            "warmup": _pos_int(entry, "warmup", where, study.settings["warmup"], minimum=0) if not study.tiny
            else study.settings["warmup"],
            "timeout_s": _pos_num(entry, "timeout_s", where, study.settings["timeout_s"]),
            **({"fault": entry["fault"]} if entry.get("fault") else {}),
            **({"trace": True} if entry.get("trace") else {})}))
    return out


def _checked_plan(p, plan, keys, combo, sweep, study, where, model):
    """The Plan of one sweep combination, checked by the rule book (parsim.plan.validate) against the
    point's model; an error names the study key at fault: the swept value (``train[0].sweep.recompute[1]``)
    when that value alone is invalid, else ``train[0].plan`` (with the sweep combination, if any)."""
    from parsim.rules import check
    try:
        obj = _plan(p, study, where)
        # a train point runs on the torch backend: its rules too (scope "run"), as `parsim run` checks them before
        # spawning (trial 2026-11-30: a dp 2 tp 2 zero 1 point passed --list and failed 4 spawned ranks 13 s later)
        check(obj, model, obj.gpus, scope="run")
        return obj
    except ParsimError as e:
        err = str(e)
        if err.startswith(f"{where}.plan: "):       # _plan's own message: said once, below
            err = err[len(f"{where}.plan: "):]
    try:
        _plan(plan, study, where)
        base_ok = True
    except ParsimError:
        base_ok = False
    if base_ok:
        for k, v in zip(keys, combo):
            try:
                _plan(dict(plan, **{k: v}), study, where)
            except ParsimError:
                raise ParsimError(f"{where}.sweep.{k}[{sweep[k].index(v)}]: {err}") from None
    at = f"{where}.plan" + (f" (sweep {', '.join(f'{k}={v}' for k, v in zip(keys, combo))})" if keys else "")
    raise ParsimError(f"{at}: {err}") from None


def _cluster(c, where, study_path):
    """A cluster preset name or an existing cluster file (as given, or relative to the study file)."""
    from parsim.topology import cluster_names
    if not isinstance(c, str) or not c.strip():
        raise _bad(where, "a cluster preset name or a cluster file", c)
    if c in cluster_names() or Path(c).is_file():
        return c
    beside = Path(study_path).parent / c
    if beside.is_file():
        return str(beside.resolve())
    from parsim.errors import unknown_preset
    raise ParsimError(f"{where}: " + unknown_preset("cluster", c, cluster_names(), "parsim presets clusters"))


def backend_overlaps_dp_sync(zero: int) -> bool:
    """Whether the torch backend hides its data-parallel gradient sync under backward: FSDP2 (ZeRO 2, 3) reduce-scatters
    in its post-backward hooks as each module finishes; DDP-style sync and ZeroRedundancyOptimizer (ZeRO 0, 1) run
    after backward (backends/torchdist/runner.py says so in its notes). Trial 2026-11-30: a ZeRO-3 run's predicted
    exposed sync, priced unhidden, was +26,094% off a measured 16 µs."""
    return int(zero) >= 2


def _plan(p: dict, study, where):
    """A Plan as the backend runs it: overlap as it syncs (backend_overlaps_dp_sync), fp32 on CPU
    ranks, bf16 on GPUs; global batch default micro_batch·dp·pp; vpp 2 for interleaved/zbv."""
    from parsim.plan import Plan
    p = dict(p)
    try:
        dp, pp = int(p.get("dp", 1)), int(p.get("pp", 1))
        p.setdefault("global_batch", int(p.get("micro_batch", 1)) * dp * pp)
    except (TypeError, ValueError):
        raise _bad(f"{where}.plan", "integer dp, pp and micro_batch", p) from None
    if p.get("schedule") in ("interleaved", "zbv") and pp > 1:
        p.setdefault("vpp", 2)
    p.setdefault("dtype", "bf16" if study.settings["backend"] == "nccl" else "fp32")
    try:
        p.setdefault("overlap", backend_overlaps_dp_sync(p.get("zero", 0)))
    except (TypeError, ValueError):
        raise _bad(f"{where}.plan.zero", "an integer 0-3", p.get("zero")) from None
    try:
        return Plan(**p)
    except TypeError as e:
        raise _bad(f"{where}.plan", "Plan fields", str(e)) from None


def _network(net, where, study):
    if net is None and len(study.networks) == 1:
        return next(iter(study.networks))
    if net not in study.networks:
        raise _bad(f"{where}.network", f"one of the study's networks ({', '.join(study.networks)})", net)
    return net


def _collective_points(entry, where, study):
    _keys(entry, COLL_KEYS, where)
    from parsim.units import fmt_bytes, parse_size_range
    op = entry.get("op", "allreduce")
    if op not in ("allreduce", "all_gather", "reduce_scatter", "broadcast"):
        raise _bad(f"{where}.op", "allreduce, all_gather, reduce_scatter or broadcast", op)
    from parsim.schedules.collectives import algorithms
    known = [*algorithms(op), "native"]
    algos = [str(a) for a in _list(entry.get("algo", "ring"))]
    for i, a in enumerate(algos):
        if a not in known:
            from parsim.errors import closest
            raise ParsimError(f"{where}.algo[{i}]: expected one of {', '.join(known)} (got {a!r}){closest(a, known)}")
    sizes = []
    for s in _list(entry.get("size", "1MiB")):
        try:
            sizes += parse_size_range(str(s))
        except ParsimError:
            raise _bad(f"{where}.size", "sizes such as 4KiB, 1MiB or a range 4KiB:64MiB:4", s) from None
    net = _network(entry.get("network"), where, study) if study.where == "netem" else None
    common = {"op": op, "repeats": _pos_int(entry, "repeats", where, 3), "warmup": _pos_int(entry, "warmup", where, 1, 0),
              "launches": _pos_int(entry, "launches", where, 1), "min_time_s": _nonneg_num(entry, "min_time_s", where),
              "max_repeats": _pos_int(entry, "max_repeats", where, 25),
              "timeout_s": _pos_num(entry, "timeout_s", where, study.settings["timeout_s"])}
    if study.where != "netem":
        common["nproc"] = _pos_int(entry, "nproc", where, 2, minimum=2)
    out = []
    for size in sizes:
        for a in algos:
            pid = f"collective {op} {a} {fmt_bytes(size)}"
            if net:
                pid = f"{net}: {pid}"
            out.append(Point(id=pid, kind="collective", network=net, spec=dict(common, algo=a, size_B=int(size))))
    return out
