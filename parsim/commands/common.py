"""Argument groups shared by several subcommands (model / cluster / plan flags)."""
from __future__ import annotations

import argparse
import re

from parsim.errors import ParsimError
from parsim.plan import DTYPES, GRAD_SYNC, KERNELS, RECOMPUTE, SCHEDULES, Plan


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: expected a positive integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} is not positive: expected a positive integer")
    return v


def name_or_path(text):
    """argparse type of --model / --cluster: a preset name or a file path; an empty or blank value is refused (it
    used to fall back to the default silently)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty: expected a preset name or a file path")
    return text


def count(hi, lo: int = 1):
    """argparse type: an integer in lo..hi, hi a number or the name of a limit in parsim.limits.
    Refused before anything is allocated, with the limit named (one line, exit 2)."""
    from parsim import limits
    top = getattr(limits, hi) if isinstance(hi, str) else hi
    why = f" (parsim.limits.{hi})" if isinstance(hi, str) else ""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{limits.shown(text)} is not an integer: expected an integer in "
                                             f"{lo}..{top}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is below {lo}: expected an integer in {lo}..{top}")
        if v > top:
            raise argparse.ArgumentTypeError(f"{v} is above the limit of {top}{why}")
        return v
    parse.__name__ = "integer"
    return parse


def number(lo: float, hi, lo_open: bool = False):
    """argparse type: a finite float in [lo, hi] ((lo, hi] with lo_open); hi a number or a limit's name."""
    from parsim import limits
    from parsim.errors import ParsimError

    def parse(text):
        try:
            return limits.check_number("value", text, lo, hi, lo_open)
        except ParsimError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value = ")) from None
    parse.__name__ = "number"
    return parse


def quantity(kind: str, need_unit: bool = False):
    """argparse type: a size ('4GiB', 0), a time ('0.2ms', '10min') or a rate ('1Gbit') as parsim.units reads
    it (finite, >= 0). Checked when the flags are parsed, so `--memory-headroom=-1GiB` is refused in one line
    naming the value and what is expected; returns the text unchanged (the command converts it). `need_unit`:
    a non-zero bare number is refused (`--memory-headroom 3` would be 3 bytes, surely meant as GiB)."""
    from parsim import units
    parser = {"size": units.parse_size, "memory": units.parse_memory_size, "time": units.parse_time,
              "rate": units.parse_rate}[kind]

    def parse(text):
        try:
            v = parser(text)
        except ParsimError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if need_unit and v and re.fullmatch(r"\s*[0-9.eE+]+\s*", str(text)):
            what = "size" if kind == "memory" else kind
            if kind == "time":       # trial 2026-11-30: `emulate --delay 1` was one second
                raise argparse.ArgumentTypeError(f"time {text!r} has no unit: expected e.g. {text.strip()}ms or "
                                                 f"{text.strip()}us (a bare number would be seconds; 0 needs none)")
            raise argparse.ArgumentTypeError(f"{what} {text!r} has no unit: expected e.g. {text.strip()}GiB or "
                                             f"{text.strip()}MiB (a bare number would be bytes; 0 needs none)")
        return text
    parse.__name__ = kind
    return parse


def add_plan_arguments(p, need_gpus=True):
    p.add_argument("--gpus", type=count("MAX_DEVICES"), required=need_gpus, help="number of devices")
    p.add_argument("--dp", type=count("MAX_DEVICES"), help="data parallel (default: gpus / (tp·pp))")
    p.add_argument("--tp", type=count("MAX_DEVICES"), default=1, help="tensor parallel")
    p.add_argument("--pp", type=count("MAX_DEVICES"), default=1, help="pipeline parallel")
    p.add_argument("--ep", type=count("MAX_DEVICES"), default=1, help="expert parallel (MoE): experts sharded over ep of the dp ranks")
    p.add_argument("--cp", type=count("MAX_DEVICES"), default=1, help="context parallel: each sequence split over cp ranks")
    p.add_argument("--vpp", type=count("MAX_DEVICES"), default=None, help="virtual stages per pipeline rank (default 2 with --schedule interleaved or zbv, else 1)")
    p.add_argument("--micro-batch", type=count("MAX_GLOBAL_BATCH"), default=1, help="sequences per micro-batch")
    p.add_argument("--global-batch", type=count("MAX_GLOBAL_BATCH"), required=False,
                   help="sequences per step (default: 1024, as `parsim plan`, rounded up to a multiple of micro-batch × dp)")
    p.add_argument("--seq-len", type=count("MAX_SEQ_LEN"), help="sequence length (default: the model's)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="default: the device's (bf16 on GPUs, fp32 on CPUs; parsim.hardware.default_dtype)")
    p.add_argument("--recompute", choices=RECOMPUTE, default="none",
                   help="activation recompute: none, selective (attention core), full (whole layer), selective-op "
                        "(torchtitan's op-level SAC: every second mm and the element-wise ops re-run)")
    p.add_argument("--recompute-every", type=count("MAX_DEVICES"), default=1, metavar="N",
                   help="with --recompute full: checkpoint every N-th layer only (torchtitan's selective_ac_option = N)")
    p.add_argument("--kernels", choices=KERNELS, default="fused",
                   help="element-wise/norm kernels: fused (Megatron/TE or torch.compile, the default) or eager "
                        "(PyTorch eager: one kernel per elementary op)")
    p.add_argument("--async-tp", action="store_true",
                   help="micro-pipeline the TP all-gather/reduce-scatter with the TP GEMMs (torchtitan async TP; "
                        "needs --sequence-parallel)")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0)
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="pipeline schedule (default 1f1b; interleaved when --vpp > 1)")
    p.add_argument("--grad-sync", choices=GRAD_SYNC, default="native", help="data-parallel gradient sync algorithm")
    p.add_argument("--no-overlap", action="store_true", help="do not overlap gradient sync with backward")
    p.add_argument("--no-flash", action="store_true", help="attention scores materialised (no flash attention)")
    p.add_argument("--tp-overlap", action="store_true",
                   help="tensor-parallel collectives pipelined with their GEMMs (Megatron/Transformer Engine "
                        "tp_comm_overlap; needs --sequence-parallel)")
    p.add_argument("--pp-overlap", action="store_true",
                   help="pipeline send/recv overlapped with the next model chunk's compute (Megatron "
                        "overlap_p2p_comm; interleaved schedule)")


def add_memory_arguments(p):
    """--memory-accounting, --grad-dtype, --cross-entropy and --memory-headroom (predict, plan, run)."""
    from parsim.costs.memory import ACCOUNTINGS, CROSS_ENTROPY_IMPLS, DEFAULT_ACCOUNTING, GRAD_DTYPES
    p.add_argument("--memory-accounting", choices=ACCOUNTINGS, default=DEFAULT_ACCOUNTING,
                   help="bytes per parameter as this framework keeps them: megatron (18: fp32 main grads, "
                        "the default), deepspeed (16, the ZeRO paper), fsdp2 (16, fp32 sharded params and grads)")
    p.add_argument("--grad-dtype", choices=GRAD_DTYPES, default=None,
                   help="dtype gradients are accumulated and data-parallel reduced in: fp32, or 16bit (the "
                        "parameters' bf16/fp16; Megatron grad_reduce_in_fp32=False / --grad-reduce-in-bf16, FSDP2 "
                        "reduce_dtype=bf16). Default: the framework's (megatron: fp32 with bf16 parameters, "
                        "fp16 with fp16; deepspeed: 16bit; fsdp2: fp32)")
    p.add_argument("--cross-entropy", choices=CROSS_ENTROPY_IMPLS, default=None,
                   help="the loss kernel: native (the framework's own, fp32 logits; the default) or te (Transformer "
                        "Engine's fused cross entropy: 16-bit logits, gradient in place; Megatron-Core's "
                        "cross_entropy_fusion_impl te, as the Megatron-Bridge performance recipes run; megatron "
                        "accounting only)")
    p.add_argument("--memory-headroom", type=quantity("memory", need_unit=True), default=None, metavar="SIZE",
                   help="memory reserved per device for the CUDA context, NCCL buffers and fragmentation "
                        "(e.g. 4GiB, 0; default: 2 GiB + 5%% of the device's capacity, parsim/data/memory.yaml)")


def memory_options(a) -> dict:
    """{'accounting', 'headroom_bytes', 'grad_dtype', 'cross_entropy'} from the flags of add_memory_arguments."""
    from parsim.units import parse_memory_size
    room = getattr(a, "memory_headroom", None)
    return {"accounting": getattr(a, "memory_accounting", None) or "megatron",
            "headroom_bytes": None if room is None else float(parse_memory_size(room)),
            "grad_dtype": getattr(a, "grad_dtype", None), "cross_entropy": getattr(a, "cross_entropy", None)}


def predict_command(model: str, cluster: str, gpus: int, plan: Plan, accounting: str | None = None) -> str:
    """The `parsim predict` line that prices `plan` as given (every knob that is not predict's default spelled out):
    what `run` and `validate` compare a measurement with, reproducible by hand (trial 2026-11-30: run's prediction
    matched predict only with --memory-accounting fsdp2 --no-overlap, flags its table never showed)."""
    p = plan
    f = [f"--model {model}", f"--cluster {cluster}", f"--gpus {gpus}", f"--dp {p.dp}"]
    f += [f"--{k} {v}" for k, v in (("tp", p.tp), ("pp", p.pp), ("ep", p.ep), ("cp", p.cp)) if v != 1]
    if p.pp > 1:
        f += [f"--vpp {p.vpp}", f"--schedule {p.schedule}"]
    f += [f"--micro-batch {p.micro_batch}", f"--global-batch {p.global_batch}"]
    f += [f"--seq-len {p.seq_len}"] if p.seq_len else []
    f += [f"--dtype {p.dtype}"] if p.dtype else []
    f += [f"--{k} {v}" for k, v, d in (("recompute", p.recompute, "none"), ("recompute-every", p.recompute_every, 1),
                                        ("kernels", p.kernels, "fused"), ("zero", p.zero, 0),
                                        ("grad-sync", p.grad_sync, "native")) if v != d]
    f += [flag for flag, on in (("--sequence-parallel", p.sequence_parallel), ("--no-overlap", not p.overlap),
                                ("--no-flash", not p.flash_attention), ("--async-tp", p.async_tp),
                                ("--tp-overlap", p.tp_overlap), ("--pp-overlap", p.pp_overlap)) if on]
    f += [f"--memory-accounting {accounting}"] if accounting and accounting != "megatron" else []
    return "parsim predict " + " ".join(f)


def plan_from_args(a, gpus: int, device=None) -> Plan:
    """The Plan the flags describe; `device` (profile or kind) decides the dtype when --dtype is not given."""
    from parsim.hardware import default_dtype
    cp = getattr(a, "cp", 1)
    if a.dp is None and gpus % (a.tp * a.pp * cp):
        raise ParsimError(f"gpus ({gpus}) is not divisible by tp·pp·cp = {a.tp}·{a.pp}·{cp} = {a.tp * a.pp * cp}")
    dp = a.dp if a.dp is not None else gpus // (a.tp * a.pp * cp)
    # as `parsim run` and `simulate`: interleaved and zbv default to 2 stages per rank, a vpp > 1 to interleaved
    vpp = a.vpp or (2 if a.schedule in ("zbv", "interleaved") else 1)
    schedule = a.schedule or ("interleaved" if vpp > 1 else "1f1b")
    if a.global_batch is not None:
        gb = a.global_batch
    else:   # plan's default (1024 sequences), rounded up to whole micro-batches on every data-parallel rank
        from parsim.search import DEFAULT_GLOBAL_BATCH
        per = a.micro_batch * dp
        gb = -(-DEFAULT_GLOBAL_BATCH // per) * per
    return Plan(dp=dp, tp=a.tp, pp=a.pp, vpp=vpp, micro_batch=a.micro_batch, global_batch=gb, seq_len=a.seq_len,
                dtype=a.dtype or default_dtype(device or "gpu"), schedule=schedule, grad_sync=a.grad_sync, zero=a.zero, recompute=a.recompute,
                sequence_parallel=a.sequence_parallel, overlap=not a.no_overlap, flash_attention=not a.no_flash,
                ep=getattr(a, "ep", 1), cp=cp, recompute_every=getattr(a, "recompute_every", 1),
                kernels=getattr(a, "kernels", "fused"), async_tp=getattr(a, "async_tp", False),
                tp_overlap=getattr(a, "tp_overlap", False), pp_overlap=getattr(a, "pp_overlap", False))


def defaults_used(a) -> str:
    """The line that says which default stood in for a --model / --cluster the user did not give
    ('' when both were given): table output prints it first, json/csv on stderr (their stdout is data).
    The defaults are parsim.search's DEFAULT_MODEL and DEFAULT_CLUSTER (one place for both commands)."""
    from parsim.search import DEFAULT_CLUSTER, DEFAULT_MODEL
    used = [f"{k} {d}" for k, d in (("model", DEFAULT_MODEL), ("cluster", DEFAULT_CLUSTER))
            if k in vars(a) and getattr(a, k) is None]
    if not used:
        return ""
    flags = " / ".join(f"--{k.split()[0]}" for k in used)
    return f"using the embedded default {' and '.join(used)} (override with {flags})\n"


def say_defaults(a, text: str) -> str:
    """`text` with the defaults_used line first (table format), or that line on stderr (json/csv)."""
    import sys
    note = defaults_used(a)
    if not note:
        return text
    if getattr(a, "format", None) == "table":
        return note + text
    sys.stderr.write(f"parsim {a._command}: {note}")
    return text


def load_cluster_arg(spec, gpus: int | None):
    """The cluster a command predicts on: a preset or cluster file (parsim.topology.load_cluster),
    or an emulated cluster's state file (`parsim emulate up` writes it; its graph with the probed
    links). With no spec inside `parsim emulate run` (PARSIM_NETEM_STATE set): that emulated
    cluster. None when there is neither (the caller's default applies)."""
    import os
    from pathlib import Path
    path = spec if spec is not None else os.environ.get("PARSIM_NETEM_STATE")
    if path is None:
        return None
    if str(path).endswith(".json") and Path(path).is_file():
        from parsim.fileio import read_user_file
        doc = read_user_file(path, "cluster", "json")     # one-line errors: file, line and column, reason
        from backends.torchdist.bench import emulated_cluster, is_emulated_state
        if is_emulated_state(doc):
            return emulated_cluster(doc, gpus)
    from parsim.topology import load_cluster
    return load_cluster(path, gpus)
