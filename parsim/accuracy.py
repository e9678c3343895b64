"""How sure is a prediction: the held-out error of parsim on the public corpus, by GPU type and kind of plan.

``python -m studies.validation.corpus`` predicts every public table with constants fitted on the *other* tables
(parsim.corpus, leave-one-table-out) and writes the pooled held-out errors per (GPU type, precision class, dense or
MoE) to ``parsim/data/validation/heldout.json`` (``parsim.corpus.heldout_summary``). This module only reads that
file (no corpus pricing at run time), so `plan` and `predict` can say next to every answer how far off parsim was on
published runs of the same GPU type, precision and kind of model that it had not been fitted to, and whether the plans
it ranks first are apart by more than that.

Keys of ``by_kind``: ``"<gpu type>/<16-bit|fp8>/<dense|moe>"``; values: {"rows", "tables", "mean", "max", "bias",
"worst_under", "regime"}: relative errors of throughput as fractions of 1 (mean of |error|, max of |error|, mean of
error, most negative) and the knob values the runs used. ``memory_by_accounting``: the same statistics of peak memory
(as reserved) per memory accounting. Where a kind has no published run the answer says *unknown* and names the
nearest evidence on the same chip as such (``nearest_evidence``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

HELDOUT_FILE = Path(__file__).parent / "data" / "validation" / "heldout.json"

# What each GPU type's (chip's) profiles are: its public tables validate them all, the first is the one fitted
# (parsim.corpus imports this table; one place).
GPU_TYPE_DEVICES = {"a100-80gb": ("a100-80gb", "a100-40gb"), "h100-sxm": ("h100-sxm",), "h200": ("h200",),
                    "b200": ("b200",), "h100-hbm2e-500w": ("h100-hbm2e-500w",)}
DEVICE_GPU_TYPE = {d: g for g, ds in GPU_TYPE_DEVICES.items() for d in ds}
# GPU types with no published run whose compute die another type's runs share (H200: GH100 with HBM3e, as H100 SXM)
SAME_DIE = {"h200": "h100-sxm"}


def precision_class(precision: str) -> str | None:
    """'fp8' for FP8 plans (per-tensor fp8 and block-scaled mxfp8: the same FP8 tensor cores and one fitted constant;
    what MXFP8 does differently is priced, parsim.layer), '16-bit' for bf16/fp16 (the two fitted constants of a GPU type, parsim.corpus); None for
    fp32 (no public fp32 table)."""
    from parsim.plan import FP8_DTYPES
    return "fp8" if precision in FP8_DTYPES else ("16-bit" if precision in ("bf16", "fp16") else None)


def key(gpu_type: str, precision: str, moe: bool) -> str:
    """The heldout.json key of a kind of plan: '<gpu type>/<precision class>/<dense|moe>'."""
    return _class_key(gpu_type, precision_class(precision), moe)


def _class_key(gpu_type: str, cls: str | None, moe: bool) -> str:
    return f"{gpu_type}/{cls}/{'moe' if moe else 'dense'}"


@functools.lru_cache(maxsize=1)
def _file() -> dict:
    try:
        return json.loads(HELDOUT_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _load() -> dict:
    return _file().get("by_kind", {})


def memory_heldout(accounting: str) -> dict | None:
    """Published-vs-predicted peak memory of runs priced with this memory accounting ({"rows", "tables", "mean",
    "max", "bias", "worst_under"}: the prediction as reserved against the published reserved peak), or None."""
    return _file().get("memory_by_accounting", {}).get(accounting)


def memory_statement(accounting: str, total_GiB: float, usable_GiB: float) -> str:
    """One line on how far parsim's memory was off on published runs of this accounting, and, when the plan fits,
    whether it still fits if it is as far under as the worst of them (or that nothing of this accounting is
    published)."""
    m = memory_heldout(accounting)
    if m is None:
        return (f"memory accuracy: no published peak memory of {accounting}-accounting runs to compare "
                f"(torchtitan's fsdp2 runs are the public ones)")
    line = (f"memory accuracy: on {m['rows']} published {accounting}-accounting runs parsim's peak (as reserved) was "
            f"off by {100 * m['mean']:.1f}% on average, {100 * m['max']:.1f}% at worst (bias {100 * m['bias']:+.1f}%)")
    under = -m["worst_under"]
    if _fits_only_if_not_under(total_GiB, usable_GiB, under):
        line += (f"; this plan fits only if its memory is not as far under as the worst of them "
                 f"({total_GiB / (1 - under):.1f} GiB at {100 * under:.0f}% under > {usable_GiB:.1f} GiB usable)")
    return line


def _fits_only_if_not_under(total_GiB: float, usable_GiB: float, under: float) -> bool:
    """A plan of `total_GiB` fits `usable_GiB` but would not if its memory were `under` (a fraction) too low."""
    return under > 0 and total_GiB <= usable_GiB < total_GiB / (1 - under)


def memory_at_risk(accounting: str, memory_GiB, usable_GiB: float) -> list[int]:
    """1-based ranks of the plans (memory per device in GiB, in ranking order) that fit only if parsim's memory is not
    as far under as on the worst published run of this accounting ([] when none, or nothing is published)."""
    under = -(memory_heldout(accounting) or {}).get("worst_under", 0.0)
    return [i + 1 for i, g in enumerate(memory_GiB) if _fits_only_if_not_under(g, usable_GiB, under)]


def heldout(device: str, precision: str, moe: bool) -> dict | None:
    """The pooled held-out error of plans like this one ({"rows", "tables", "mean", "max", "bias"}), or None when
    no public table of this GPU type, precision class and kind (dense / MoE) is expressible."""
    g = DEVICE_GPU_TYPE.get(device)
    if g is None or precision_class(precision) is None:
        return None
    return _load().get(key(g, precision, moe))


def statement(device: str, precision: str, moe: bool) -> str:
    """One line: the held-out error of parsim on public runs like this plan, or that it is unknown."""
    kind = "MoE" if moe else "dense"
    cls = precision_class(precision) or precision
    if device not in DEVICE_GPU_TYPE:
        return (f"accuracy: no published tables for {device}; `parsim validate` measures parsim against runs on "
                f"this machine")
    h = heldout(device, precision, moe)
    g = DEVICE_GPU_TYPE[device]
    # the constants are fitted on dense runs only (parsim.corpus: MoE rows are held out of every fit), so a class with
    # MoE runs but no dense one still prices with an assumed constant (H100 SXM 16-bit: GPT-OSS BF16 rows only)
    assumed = (f"; {_constant_used(device, cls, g)} is fitted on no published run of it ("
               + ("the MoE runs above are never fitted on; " if h is not None and moe else "")
               + "an assumption, parsim/data/devices.yaml)" if _class_key(g, cls, False) not in _load() else "")
    if h is None:
        near = ""
        n = nearest_evidence(device, precision, moe)
        if n:
            (c, k), o = n
            near = (f"; nearest evidence, {c} {'MoE' if k else 'dense'} runs on {g}{_models(o)}: "
                    f"{100 * o['mean']:.1f}% mean, {100 * o['max']:.1f}% max error over {o['rows']} runs")
        sib = SAME_DIE.get(g)
        # no run on the chip at all: the runs of the part with the same compute die, said as such (trial 2026-11-30:
        # an H200 answer said it had no evidence at all while H100 SXM, the same GH100 die, has 18 fp8 runs)
        if not n and sib:
            for c, k in _kinds_by_nearness(cls, moe, own=True):
                o = _load().get(_class_key(sib, c, k))
                if o:
                    near = (f"; {sib}, the same compute die, has {c} {'MoE' if k else 'dense'} runs{_models(o)}: "
                            f"{100 * o['mean']:.1f}% mean, {100 * o['max']:.1f}% max error over {o['rows']} runs "
                            f"(its memory and power differ)")
                    break
        return (f"accuracy: unknown — no published {cls} {kind} run on {device} to hold out{near}{assumed} "
                f"(parsim report --published)")
    sh = h.get("shipped")
    shipped = (f"; with the shipped constants the same runs are off by {100 * sh['mean']:.1f}% on average, "
               f"{100 * sh['max']:.1f}% at worst" if sh else "")
    if sh and moe and (round(sh["mean"], 4), round(sh["max"], 4)) == (round(h["mean"], 4), round(h["max"], 4)):
        shipped = "; the shipped constants give the same (MoE runs are not fitted on)"
    # one-sided evidence reads as a bound (trial 2026-11-30: every MoE run ran slower than predicted, +29% to +211%,
    # while the line read as a symmetric error bar)
    side = ""
    if h["rows"] >= 2 and abs(h["bias"]) >= h["mean"] - 1e-9:
        side = (f"; every one of them ran {'slower' if h['bias'] > 0 else 'faster'} than predicted: read the predicted "
                f"throughput as an {'upper' if h['bias'] > 0 else 'lower'} bound")
    if device != g:     # another part of the same chip (trial 2026-11-30: A100-40GB quoted A100-80GB runs unsaid)
        side += (f"; those runs are on {g}, priced here for {device}: the same chip with other memory, so its "
                 f"memory-bound parts are not covered by them")
    return (f"accuracy: on {h['rows']} published {cls} {kind} runs on {g}{_models(h)} ({h['tables']} tables, "
            f"each predicted with constants fitted on the others) predicted throughput was off by {100 * h['mean']:.1f}% on "
            f"average, {100 * h['max']:.1f}% at worst (bias {100 * h['bias']:+.1f}%){side}{shipped}{assumed}")


def model_note(device: str, precision: str, moe: bool, model: str | None, as_named: str | None = None) -> str:
    """'' or one line: the held-out errors of the published runs of this very model among the figure's (trial
    2026-11-30: a Qwen3-30B-A3B plan quoted the pooled 89% beside Mixtral's +2% and never said its own model's
    published runs were +61% to +209% off). `model`: the preset whose runs are the evidence
    (parsim.model.preset_twin); `as_named`: the name the user's model goes by, when another (a config.json)."""
    h = heldout(device, precision, moe) if model else None
    errs = (h or {}).get("by_model", {}).get(model)
    if not errs:
        return ""
    g = DEVICE_GPU_TYPE.get(device, device)
    shown = ", ".join(f"{100 * e:+.0f}%" for e in errs)
    who = (f"{as_named} has the architecture of preset {model}, whose" if as_named and as_named != model
           else f"{model}'s")
    return (f"{who} own published runs on {g} ({len(errs)}) were predicted {shown} off, held out "
            f"(+ = predicted faster than published)")


def _constant_used(device: str, cls: str, g: str) -> str:
    """Which sustained fraction a plan of class `cls` on `device` is priced with, in words (trial 2026-11-30: an H200
    FP8 answer spoke of "parsim's fp8 constant for h200", which does not exist: its FP8 plans take the 16-bit one)."""
    from parsim.hardware import get_device
    dev = get_device(device)            # a device of DEVICE_GPU_TYPE: a catalog profile
    if cls == "fp8" and dev.sustained_fraction_fp8 is None:
        return (f"{g} has no fitted fp8 constant: its fp8 plans take the 16-bit one, {dev.sustained_fraction:g}, which "
                f"too")
    f = dev.sustained_fraction_fp8 if cls == "fp8" else dev.sustained_fraction
    return f"parsim's {cls} constant for {g} ({f:g})"


def _models(h: dict) -> str:
    """' of qwen3-30b-a3b' / ' of 4 models': which models a pooled figure rests on (names while there are few)."""
    m = h.get("models") or []
    if not m:
        return ""
    return f" of {', '.join(m)}" if len(m) <= 3 else f" of {len(m)} models"


def _kinds_by_nearness(cls: str, moe: bool, own: bool) -> list:
    """(precision class, moe) kinds of published runs, nearest to a plan of class `cls` first: its own kind (when
    `own`), the same kind of model in the other precision class — an MoE plan's evidence is MoE runs, whose errors
    differ most — then the other kind of model."""
    order = ([(cls, moe)] if own else []) + [(c, moe) for c in ("16-bit", "fp8") if c != cls] \
        + [(c, not moe) for c in (cls, "16-bit", "fp8")]
    return list(dict.fromkeys(order))


def nearest_evidence(device: str, precision: str, moe: bool):
    """((precision class, moe), stats) of the closest kind of published run on the same chip when this kind has none:
    the same kind of model (dense / MoE) in the other precision class first — an MoE plan's evidence is MoE runs,
    whose errors differ most — then the other kind; None when the chip has no published run at all."""
    g = DEVICE_GPU_TYPE.get(device)
    if g is None:
        return None
    for c, k in _kinds_by_nearness(precision_class(precision), moe, own=False):
        o = _load().get(_class_key(g, c, k))
        if o:
            return (c, k), o
    return None


ERROR_CONVENTION = ("relative error = predicted / published - 1: + = parsim predicted more (faster, or more memory) "
                    "than published; mean and max are of |error|, bias of the signed error")


COVERAGE_KNOBS = ("tp", "pp", "cp", "ep", "zero", "schedule", "recompute")


def ranked_first_knobs(columns, seq_len) -> dict | None:
    """The knobs coverage_note reads, of a ranking's plan #1 (`columns`: parsim.search's columns, best first), with
    the ranking's sequence length; None for an empty ranking."""
    if not len(columns["tp"]):
        return None
    first = {k: (columns[k][0].item() if hasattr(columns[k][0], "item") else columns[k][0])
             for k in COVERAGE_KNOBS if k in columns}
    return dict(first, seq_len=seq_len)


def labelled(device: str, precision: str, moe: bool, model: str | None = None, plan: dict | None = None,
             accounting: str | None = None, total_GiB: float = 0.0, usable_GiB: float = 0.0,
             as_named: str | None = None) -> dict:
    """The how-sure figures of a plan as JSON carries them, each labelled with the kind of published runs it pools
    ('<gpu type>/<precision class>/<dense|moe>', heldout.json's key; None for a device without published tables):
    {"kind", "heldout" (stats or None), "nearest_evidence" ({"kind", stats...} or None; only when "heldout" is None),
    "statement" (the line `plan` and `predict` print), "model_note" (this model's own published errors, or None),
    "extrapolation" (with `plan`, a Plan's dict: the knobs outside the published runs, coverage_note, or None),
    "memory" (with `accounting`: {"statement", "fits_only_if_not_as_far_under"} for a plan of `total_GiB` against
    `usable_GiB`), "error_convention"}. A machine reader gets what the text says, labelled (trial 2026-11-30: plan JSON
    gave a bare null where the text named the nearest evidence, and no extrapolation or memory warning)."""
    g = DEVICE_GPU_TYPE.get(device)
    cls = precision_class(precision)
    h = heldout(device, precision, moe)
    near = None
    if h is None:
        n = nearest_evidence(device, precision, moe)
        if n:
            (c, k), o = n
            near = {"kind": _class_key(g, c, k), **o}
    out = {"kind": _class_key(g, cls, moe) if g and cls else None, "heldout": h, "nearest_evidence": near,
           "statement": statement(device, precision, moe), "model_note": model_note(device, precision, moe, model, as_named) or None,
           "extrapolation": (coverage_note(device, precision, moe, plan) or None) if plan is not None else None,
           "error_convention": ERROR_CONVENTION}
    if accounting is not None:
        mem = memory_statement(accounting, total_GiB, usable_GiB)
        out["memory"] = {"statement": mem,
                         "fits_only_if_not_as_far_under": memory_at_risk(accounting, [total_GiB], usable_GiB) == [1]}
    return out


def _ranking_basis(device: str, precision: str, moe: bool):
    """(the error figure a ranking is judged against, how to name it): the held-out one, else the nearest evidence's
    (said so); (None, '') when the chip has no published run."""
    h = heldout(device, precision, moe)
    if h is not None:
        return h, "the held-out mean error"
    n = nearest_evidence(device, precision, moe)
    return (n[1], "the nearest evidence's mean error") if n else (None, "")


def ranking_count(step_times_s, device: str, precision: str, moe: bool) -> int | None:
    """How many of the ranked plans (step times in seconds, best first) lie within the mean error of #1 (the held-out
    figure, else the nearest evidence's): plans parsim cannot rank apart. None when the chip has no published run."""
    h, _ = _ranking_basis(device, precision, moe)
    return None if h is None else within_error(step_times_s, h["mean"])


def ranking_note(step_times_s, device: str, precision: str, moe: bool) -> str:
    """'' or one line: ranking_count said in words (with the figure and where it comes from); '' when only #1 is
    within it, or the chip has no published run."""
    h, what = _ranking_basis(device, precision, moe)
    k = None if h is None else within_error(step_times_s, h["mean"])
    if not k or k <= 1:
        return ""
    more = "" if k < len(step_times_s) else " (at least)"
    return (f"plans 1–{k}{more} are within {100 * h['mean']:.1f}% of #1, {what}: parsim cannot rank "
            f"them apart; measure the top few (parsim run / parsim validate)")


def coverage_note(device: str, precision: str, moe: bool, plan: dict) -> str:
    """'' or one line: the knobs of `plan` (a Plan's dict: tp, pp, cp, ep, seq_len, zero, schedule, recompute) outside
    what the held-out published runs of its kind used — parallel degrees outside the range they used (above their
    largest, or below their smallest: an MoE plan at ep 1 where every run used ep >= 8 has no all-to-all), a sequence
    length above their largest; a ZeRO stage, schedule or recompute policy none of them ran. The held-out error says
    nothing sure there."""
    h, what = _ranking_basis(device, precision, moe)      # the held-out figure, else the nearest evidence (said so)
    behind = "the nearest evidence" if what.startswith("the nearest") else "that figure"
    seen = (h or {}).get("regime")
    if not seen:
        return ""
    out = []
    for k in ("tp", "pp", "cp", "ep"):
        v, used = plan.get(k, 1), seen.get(k, [1])
        if v > max(used) or v < min(used):    # below too: ep 1 has no all-to-all at all (trial 2026-11-30)
            out.append(f"{k} {v} (they used {', '.join(map(str, used))})")
    seq, used = plan.get("seq_len"), seen.get("seq_len")
    if seq and used and seq > max(used):
        out.append(f"sequence length {seq} (they used {', '.join(map(str, used))})")
    for k in ("zero", "schedule", "recompute"):
        v, used = plan.get(k), seen.get(k, [])
        if v is not None and used and v not in used:
            out.append(f"{'ZeRO stage' if k == 'zero' else k} {v} (they used {', '.join(map(str, used))})")
    if not out:
        return ""
    return (f"outside the published runs behind {behind}: " + "; ".join(out)
            + " — an extrapolation the held-out error does not cover")


def within_error(step_times_s, mean_error: float) -> int:
    """How many of the ranked plans (step times in seconds, best first, shape [n]) are predicted within
    `mean_error` (a fraction) of the best: plans parsim cannot tell apart at its held-out mean error.
    Always >= 1 for a non-empty ranking."""
    if len(step_times_s) == 0:
        return 0
    best = float(step_times_s[0])
    return sum(1 for t in step_times_s if float(t) / best - 1 <= mean_error)


def lines(device: str, precision: str, moe: bool, plan: dict | None = None, ranked_steps_s=None,
          accounting: str | None = None, total_GiB: float = 0.0, usable_GiB: float = 0.0,
          model: str | None = None, as_named: str | None = None) -> list[str]:
    """The "how sure" lines an answer ends with (the one place `plan` and `predict` take them from): the held-out
    statement; with `ranked_steps_s` (a ranking's step times, best first) which plans cannot be told apart; with
    `plan` (a Plan's dict; a ranking's #1) the knobs outside the published runs; with `accounting` the memory
    statement (`total_GiB` / `usable_GiB` of the plan: whether its fit survives the worst published error); with
    `model` (a preset name) the held-out errors of that model's own published runs (`as_named`: the user's name for
    it, when its architecture is that preset's)."""
    out = [statement(device, precision, moe), model_note(device, precision, moe, model, as_named)]
    if ranked_steps_s is not None:
        out.append(ranking_note(ranked_steps_s, device, precision, moe))
    if plan is not None:
        cov = coverage_note(device, precision, moe, plan)
        out.append(f"plan #1: {cov}" if cov and ranked_steps_s is not None else cov)
    if accounting is not None:
        mem = memory_statement(accounting, total_GiB, usable_GiB)
        out.append(mem.replace("; this plan fits only", "; plan #1 fits only") if ranked_steps_s is not None else mem)
    return [x for x in out if x]

