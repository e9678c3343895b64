"""Argument groups shared by several subcommands (model / cluster / plan flags)."""
from __future__ import annotations

import argparse

from parsim.errors import ParsimError
from parsim.plan import DTYPES, GRAD_SYNC, RECOMPUTE, SCHEDULES, Plan


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: expected a positive integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} is not positive: expected a positive integer")
    return v


def add_plan_arguments(p, need_gpus=True):
    p.add_argument("--gpus", type=positive_int, required=need_gpus, help="number of devices")
    p.add_argument("--dp", type=positive_int, help="data parallel (default: gpus / (tp·pp))")
    p.add_argument("--tp", type=positive_int, default=1, help="tensor parallel")
    p.add_argument("--pp", type=positive_int, default=1, help="pipeline parallel")
    p.add_argument("--ep", type=positive_int, default=1, help="expert parallel (MoE): experts sharded over ep of the dp ranks")
    p.add_argument("--cp", type=positive_int, default=1, help="context parallel: each sequence split over cp ranks")
    p.add_argument("--vpp", type=positive_int, default=None, help="virtual stages per pipeline rank (interleaved)")
    p.add_argument("--micro-batch", type=positive_int, default=1, help="sequences per micro-batch")
    p.add_argument("--global-batch", type=positive_int, required=False, help="sequences per step")
    p.add_argument("--seq-len", type=positive_int, help="sequence length (default: the model's)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--recompute", choices=RECOMPUTE, default="none")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0)
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="pipeline schedule (default 1f1b; interleaved when --vpp > 1)")
    p.add_argument("--grad-sync", choices=GRAD_SYNC, default="native", help="data-parallel gradient sync algorithm")
    p.add_argument("--no-overlap", action="store_true", help="do not overlap gradient sync with backward")
    p.add_argument("--no-flash", action="store_true", help="attention scores materialised (no flash attention)")


def plan_from_args(a, gpus: int) -> Plan:
    cp = getattr(a, "cp", 1)
    if a.dp is None and gpus % (a.tp * a.pp * cp):
        raise ParsimError(f"gpus ({gpus}) is not divisible by tp·pp·cp = {a.tp}·{a.pp}·{cp} = {a.tp * a.pp * cp}")
    dp = a.dp if a.dp is not None else gpus // (a.tp * a.pp * cp)
    vpp = a.vpp or (2 if a.schedule == "zbv" else 1)
    schedule = a.schedule or ("interleaved" if vpp > 1 else "1f1b")
    gb = a.global_batch if a.global_batch is not None else a.micro_batch * dp
    return Plan(dp=dp, tp=a.tp, pp=a.pp, vpp=vpp, micro_batch=a.micro_batch, global_batch=gb, seq_len=a.seq_len,
                dtype=a.dtype, schedule=schedule, grad_sync=a.grad_sync, zero=a.zero, recompute=a.recompute,
                sequence_parallel=a.sequence_parallel, overlap=not a.no_overlap, flash_attention=not a.no_flash,
                ep=a.ep, cp=cp)
