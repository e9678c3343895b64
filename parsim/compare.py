"""Measured against predicted: a join of two StepReports on their keys.

Both executors return a :class:`parsim.predict.StepReport`; ``StepReport.flat()`` names every
numeric field (``step_time_s``, ``breakdown_s.bubble``, ``memory_breakdown_GiB.weights``, ...),
so comparing is an outer join on those names, with the measured spread beside each field.
"""
from __future__ import annotations

from parsim.predict import StepReport

# the fields `parsim run` and the reports show, in this order (then every other shared key)
HEADLINE = ("step_time_s", "tokens_per_s", "samples_per_s", "model_tflops_per_gpu", "mfu", "memory_GiB")


def as_report(r) -> StepReport | None:
    """A StepReport from a StepReport, its dict, or None."""
    if r is None or isinstance(r, StepReport):
        return r
    return StepReport.from_dict(r)


def rel_error(measured, predicted):
    """(predicted − measured) / measured: + means the prediction is too high. None where undefined."""
    if measured is None or predicted is None or measured == 0:
        return None
    return (predicted - measured) / measured


# Fields a backend's report counts rather than measures (the torch backend sums its tensors' sizes: the model states);
# their error is not shown (trial 2026-11-30: `run` printed "+0%" beside them, read as a validated match).
COUNTED = ("memory_breakdown_GiB.weights", "memory_breakdown_GiB.grads", "memory_breakdown_GiB.optimizer")
COUNTED_AGREE = 0.005      # a counted and a priced value within this relative difference: the same count


def join(measured, predicted=None) -> list[dict]:
    """One row per key of the measured report: key, measured, spread_min, spread_max, predicted, error.

    `measured`/`predicted`: StepReport or its dict. error = (predicted − measured)/measured (the
    convention of the validation tables: + = predicted too high). Keys only one side has get None
    on the other; a COUNTED key gets counted True and error None where it agrees with the prediction (within
    COUNTED_AGREE), else its error (two accountings of the same tensors that differ). Headline keys first, then the breakdown and memory
    keys in report order."""
    m, p = as_report(measured), as_report(predicted)
    mf, pf = m.flat(), (p.flat() if p is not None else {})
    keys = [k for k in HEADLINE if k in mf] + [k for k in mf if k not in HEADLINE and "." in k]
    rows = []
    for k in keys:
        lo, hi = (m.spread.get(k) or (None, None))
        pv = pf.get(k)
        counted = m.source == "measured" and k in COUNTED
        err = rel_error(mf[k], pv)
        # a counted value equal to the priced one is no validation (no error shown); one that differs is a
        # discrepancy between two accountings of the same tensors, shown (trial 2026-11-30: ZeRO-1 weights counted
        # 0.001005 GiB against 0.001507 priced showed no error)
        if counted and (err is None or abs(err) <= COUNTED_AGREE):
            err = None
        rows.append({"key": k, "measured": mf[k], "spread_min": lo, "spread_max": hi, "predicted": pv,
                     "error": err, "counted": counted})
    return rows


def join_frame(measured, predicted=None):
    """``join`` as a pandas DataFrame indexed by key."""
    import pandas as pd
    return pd.DataFrame(join(measured, predicted)).set_index("key")
