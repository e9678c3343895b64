"""A plan space of 3.2 million rows, priced the way `parsim plan` prices its candidates.

Issue 13 asks that "the 3.2 M-plan space of GPT-3 175B on 64 GPUs" be priced in <= 5 s and <= 500 MiB.
The search itself generates a few tens of thousands of candidates for `parsim plan --gpus 64 --model gpt3-175b`
(27,285 valid when this was written; 36,380 once torchtitan's selective-op policy was searched), so the space
here is those valid plans repeated at `copies` global batches (1,024, 2,048, ... sequences, every one a multiple
of 1,024, so each plan stays valid), copies = round(TARGET_ROWS / valid): about 3.2 M rows whatever the
search generates. The table is kept in narrow
integer columns, with the columns equal in every row as broadcast constants (price converts a chunk at a
time); it is priced chunk by chunk, keeping the plans that fit (parsim.search._price_fitting).

    PYTHONPATH=$PWD python -m tests.benchmarks.plan_space [--copies N] [--chunk-rows N]

prints one JSON line: rows, fitting, price_s and price_cpu_s (wall and CPU seconds of the pricing alone),
peak_rss_MiB (the whole process,
getrusage's ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

MODEL, CLUSTER, GPUS, BATCH, SEQ = "gpt3-175b", "dgx-h100", 64, 1024, 2048
TARGET_ROWS = 3_200_000


def copies_for(valid: int) -> int:
    """Global batches to repeat `valid` plans at so that the table has about TARGET_ROWS rows."""
    return max(1, round(TARGET_ROWS / valid))


def table(copies: int | None = None):
    """(model, cluster, the plan table: the valid candidates at global batches BATCH·1..BATCH·copies,
    the number of valid candidates, copies); copies None: copies_for(the number of valid candidates)."""
    from parsim.model import load_model
    from parsim.predict import get_cluster
    from parsim.search import candidates
    model, cl = load_model(MODEL), get_cluster(CLUSTER, GPUS)
    cols, _, _ = candidates(model, GPUS, BATCH, SEQ, device=cl.device)
    n = len(cols["dp"])
    copies = copies or copies_for(n)
    out = {}
    for k, v in cols.items():
        if k == "gb":
            out[k] = np.repeat(BATCH * np.arange(1, copies + 1, dtype=np.int32), n)
        elif (v == v[0]).all():
            out[k] = np.broadcast_to(v[:1], (n * copies,))
        else:
            out[k] = np.tile(v.astype(bool if v.dtype == bool else np.int16), copies)
    return model, cl, out, n, copies


def peak_rss_MiB() -> float:
    """Peak resident memory of this process so far, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    from parsim.predict import PRICE_CHUNK_ROWS
    from parsim.search import _price_fitting
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.plan_space", description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=None)
    ap.add_argument("--chunk-rows", type=int, default=PRICE_CHUNK_ROWS)
    a = ap.parse_args(argv)
    model, cl, cols, valid, copies = table(a.copies)
    t0, c0 = time.perf_counter(), time.process_time()
    _, _, fitting = _price_fitting(model, cl, cols, "megatron", None, a.chunk_rows)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"rows": len(cols["dp"]), "valid": valid, "copies": copies, "fitting": int(fitting), "price_s": round(seconds, 3),
                      "price_cpu_s": round(cpu, 3),
                      "peak_rss_MiB": round(peak_rss_MiB(), 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
