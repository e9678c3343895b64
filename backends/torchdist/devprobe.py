"""Measure a device for its profile: GEMM throughput by shape and memory (HBM) copy bandwidth.

    python -m backends.torchdist.devprobe SPEC.json OUT.json

SPEC: ``{"gemm": [[m, n, k], ...], "hbm_MiB": [..], "dtype": "bf16"}``. On a CUDA device the
GEMMs run in ``dtype``, on a CPU (the dry run) in fp32 on one thread. Each GEMM C[m,n] = A[m,k]·B[k,n]
(2·m·n·k FLOPs) is timed with CUDA events (GPU) or perf_counter (CPU) over repeats after a warm-up,
median kept; a copy of N bytes moves 2·N bytes (read + write). OUT gets the raw points; the
profile is fitted from them by ``parsim.devfit`` (the core never imports torch).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def _timer(cuda: bool):
    import torch
    if cuda:
        def run(fn, reps):
            ts = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b) / 1e3)
            return statistics.median(ts)
    else:
        def run(fn, reps):
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)
    return run


def _reps(t_one: float, budget_s: float = 0.3, lo: int = 3, hi: int = 50) -> int:
    return int(max(lo, min(hi, budget_s / max(t_one, 1e-6))))


def measure(spec: dict) -> dict:
    import torch
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.get("dtype", "bf16")] \
        if cuda else torch.float32
    timed = _timer(cuda)
    gemm = []
    for m, n, k in spec["gemm"]:
        a = torch.randn(m, k, device=dev, dtype=dtype)
        b = torch.randn(k, n, device=dev, dtype=dtype)
        fn = lambda: torch.matmul(a, b)   # noqa: E731
        t1 = timed(fn, 2)                 # warm-up (cuBLAS heuristics, clocks)
        t = timed(fn, _reps(t1))
        gemm.append({"m": m, "n": n, "k": k, "flops": 2.0 * m * n * k, "time_s": t, "flops_per_s": 2.0 * m * n * k / t})
        del a, b
    hbm = []
    for mib in spec["hbm_MiB"]:
        nbytes = int(mib * 2 ** 20)
        src = torch.empty(nbytes // 4, device=dev, dtype=torch.float32).fill_(1.0)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)   # noqa: E731
        t1 = timed(fn, 2)
        t = timed(fn, _reps(t1))
        hbm.append({"bytes": src.numel() * 4, "moved_bytes": 2 * src.numel() * 4, "time_s": t,
                    "Bps": 2 * src.numel() * 4 / t})
        del src, dst
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {"device_name": name, "cuda": cuda, "dtype": spec.get("dtype", "bf16") if cuda else "fp32",
            "torch": torch.__version__, "cuda_version": torch.version.cuda, "gemm": gemm, "hbm": hbm,
            "method": "GEMM: torch.matmul, median of repeats after 2 warm-up calls (CUDA events on GPU, "
                      "perf_counter and 1 thread on CPU); copy: Tensor.copy_, 2 x bytes moved"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    res = measure(spec)
    out = Path(argv[1])
    from parsim.outputs import write_atomic
    write_atomic(out, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
