"""Device profiles: peak FLOP/s per dtype, memory capacity and bandwidth, efficiency curves.

Profiles are data (``parsim/data/devices.yaml``, plus the ``devices.yaml`` `parsim calibrate`
writes to the user's calibration directory (``parsim.calibrate.home()``) or the file
``PARSIM_DEVICES_LOCAL`` names, which take precedence); this module only loads them and evaluates the
curves (``profile_file(name)`` says which file a profile came from). A roofline prices each kernel: time = max(FLOPs / (peak·eff), bytes / (bw·eff)).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from parsim.errors import ParsimError, closest

DATA = Path(__file__).parent / "data"
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass(frozen=True)
class Curve:
    """Piecewise-linear efficiency in log10(size); flat beyond the ends."""
    sizes: tuple
    effs: tuple

    @classmethod
    def from_points(cls, points):
        pts = sorted((float(s), float(e)) for s, e in points)
        return cls(tuple(p[0] for p in pts), tuple(p[1] for p in pts))

    def __call__(self, size):
        x = np.log10(np.maximum(np.asarray(size, dtype=float), 1e-3))
        xs = np.log10(np.maximum(np.asarray(self.sizes), 1e-3))
        return np.interp(x, xs, self.effs)


def default_dtype(device) -> str:
    """The training dtype a plan uses when none is given, by device (a DeviceProfile or its kind):
    bf16 on GPUs (mixed precision, as Megatron-LM and torchtitan train), fp32 on CPUs — torch's
    default dtype, what `parsim run` executes on gloo, and the only dtype with fast matrix kernels
    on CPUs without AMX. One function, so `plan`, `predict`, `simulate` and `run` agree."""
    kind = device if isinstance(device, str) else getattr(device, "kind", "gpu")
    return "fp32" if kind == "cpu" else "bf16"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: str                       # gpu | cpu
    peak_flops: dict                # dtype -> FLOP/s (dense matrix units)
    vector_flops: float             # FLOP/s for element-wise kernels
    memory_bytes: float
    memory_bandwidth_Bps: float
    matmul_eff: Curve               # GFLOP per GEMM -> fraction
    vector_eff: Curve               # GFLOP per kernel -> fraction
    memory_eff: Curve               # MB per kernel -> fraction
    matmul_eff_fp8: Curve | None = None   # FP8 GEMMs (fraction of the fp8 peak); None: the matmul curve
    source: str = ""
    sustained_fraction: float = 1.0  # end-to-end training GEMM rate / best-shape benchmark rate (data)
    # Flash-attention kernel rate as a fraction of the bf16 peak by sequence length (queries per rank), causal,
    # head_dim 128: forward and backward, from the published kernel benchmarks of the kernel the frameworks select
    # (data: devices.yaml key attention_efficiency). Scaled by the sustained fraction like the matmul curves.
    # None: no published figure for this device; the core is then priced as a GEMM roofline.
    attention_eff_fwd: Curve | None = None
    attention_eff_bwd: Curve | None = None
    # The sustained fraction of FP8 training plans (every tensor-core kernel of an fp8 plan: FP8 GEMMs and the
    # bf16 attention core and head), fitted per GPU type on the public FP8 rows (parsim.corpus). None: as 16-bit.
    sustained_fraction_fp8: float | None = None
    # Host-side software time per unit of work, seconds (eager frameworks on a CPU dispatch
    # synchronously, so it adds to the kernels' time): keys layer_fwd, layer_bwd, head_fwd,
    # head_bwd, optimizer_base, optimizer_per_layer. Measured by `parsim calibrate`;
    # GPU profiles carry none (launches overlap device execution at LLM kernel sizes).
    overhead_s: tuple = ()
    # Host software time per step of a collective schedule, seconds (CPU ranks: gloo + Python):
    # executor = our isend/irecv executor (backends/torchdist/collectives.run_schedule), native =
    # the library's own collective. Measured on loopback by `parsim calibrate`
    # (keys executor_step_overhead_us, native_step_overhead_us); 0 for GPUs (NCCL's latencies
    # stay in the links' latency).
    executor_step_overhead_s: float = 0.0
    native_step_overhead_s: float = 0.0
    # ... plus this much per message a rank posts in a step (each isend/irecv of our executor:
    # key executor_message_overhead_us), so a rank posting p-1 sends and p-1 receives pays more
    # than a ring's one of each. Measured with the step overhead on loopback; 0 = not known.
    executor_message_overhead_s: float = 0.0
    # cores of one such device (CPU: the host's); more ranks than cores on one CPU share the step
    # overhead's CPU time: it grows by ranks/cores (parsim.costs.network). 0 = not known, no sharing.
    cores: int = 0

    def overhead(self, key: str) -> float:
        return dict(self.overhead_s).get(key, 0.0)

    def with_sustained_fraction(self, f: float, fp8: float | None = None) -> "DeviceProfile":
        """This profile with 16-bit sustained fraction `f` (the matmul and attention curves rescaled) and, when
        given, FP8 sustained fraction `fp8` (unchanged when None)."""
        scale = lambda c: None if c is None else Curve(c.sizes, tuple(e * f / self.sustained_fraction for e in c.effs))
        return replace(self, matmul_eff=scale(self.matmul_eff), matmul_eff_fp8=scale(self.matmul_eff_fp8),
                       attention_eff_fwd=scale(self.attention_eff_fwd), attention_eff_bwd=scale(self.attention_eff_bwd),
                       sustained_fraction=f,
                       sustained_fraction_fp8=self.sustained_fraction_fp8 if fp8 is None else float(fp8))

    def fp8_time_scale(self) -> float:
        """Multiplier of every tensor-core kernel's time in an FP8 plan: sustained_fraction / sustained_fraction_fp8
        (the curves carry the 16-bit fraction); 1 where the device has no FP8 fraction of its own."""
        return self.sustained_fraction / self.sustained_fraction_fp8 if self.sustained_fraction_fp8 else 1.0

    def matmul_flops(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise ParsimError(f"device {self.name} has no {dtype} peak: expected one of {sorted(self.peak_flops)}")
        return self.peak_flops[dtype]

    def gemm_time_s(self, flops, bytes_moved, dtype: str):
        """Roofline of one GEMM: max(FLOPs/(peak·eff(GFLOP)), bytes/(bw·eff(MB)))."""
        flops = np.asarray(flops, dtype=float)
        t_c = flops / (self.matmul_flops(dtype) * self.matmul_eff(flops / 1e9))
        return np.maximum(t_c, self.memory_time_s(bytes_moved))

    def memory_time_s(self, bytes_moved):
        """A memory-bound kernel: bytes / (bandwidth · eff(MB))."""
        b = np.asarray(bytes_moved, dtype=float)
        return b / (self.memory_bandwidth_Bps * self.memory_eff(b / 1e6))

    def vector_time_s(self, flops, bytes_moved):
        """Element-wise kernel: max(FLOPs/(vector peak·eff), bytes/(bw·eff))."""
        f = np.asarray(flops, dtype=float)
        return np.maximum(f / (self.vector_flops * self.vector_eff(f / 1e9)), self.memory_time_s(bytes_moved))


def _profile(name: str, d: dict) -> DeviceProfile:
    try:
        f = float(d.get("matmul_sustained_fraction", 1.0))
        attn = d.get("attention_efficiency") or {}
        prof = DeviceProfile(
            name=name, kind=d.get("kind", "gpu"),
            peak_flops={k: float(v) * 1e12 for k, v in d["peak_TFLOPs"].items()},
            vector_flops=float(d["vector_TFLOPs"]) * 1e12,
            memory_bytes=(float(d["memory_MiB"]) * 2 ** 20 if "memory_MiB" in d else float(d["memory_GiB"]) * 2 ** 30),
            memory_bandwidth_Bps=float(d["memory_bandwidth_GBps"]) * 1e9,
            matmul_eff=Curve.from_points(d["matmul_efficiency"]),
            vector_eff=Curve.from_points(d["vector_efficiency"]),
            memory_eff=Curve.from_points(d["memory_efficiency"]),
            matmul_eff_fp8=Curve.from_points(d["matmul_efficiency_fp8"]) if "matmul_efficiency_fp8" in d else None,
            source=str(d.get("source", "")),
            attention_eff_fwd=Curve.from_points(attn["fwd"]) if "fwd" in attn else None,
            attention_eff_bwd=Curve.from_points(attn["bwd"]) if "bwd" in attn else None,
            sustained_fraction_fp8=(float(d["matmul_sustained_fraction_fp8"]) if "matmul_sustained_fraction_fp8" in d
                                    else None),
            overhead_s=tuple(sorted((str(k), float(v) * 1e-6) for k, v in (d.get("overhead_us") or {}).items())),
            executor_step_overhead_s=float(d.get("executor_step_overhead_us", 0.0)) * 1e-6,
            native_step_overhead_s=float(d.get("native_step_overhead_us", 0.0)) * 1e-6,
            executor_message_overhead_s=float(d.get("executor_message_overhead_us", 0.0)) * 1e-6,
            cores=int(d.get("cores", 0)),
        )
        return prof.with_sustained_fraction(f) if f != 1.0 else prof
    except (KeyError, TypeError, ValueError) as e:
        raise ParsimError(f"device profile {name!r} is malformed ({type(e).__name__}: {e}): expected keys "
                          "peak_TFLOPs, vector_TFLOPs, memory_MiB (or memory_GiB), memory_bandwidth_GBps, *_efficiency") from None


@functools.lru_cache(maxsize=None)
def _catalog() -> dict:
    raw = yaml.safe_load((DATA / "devices.yaml").read_text())
    from parsim.calibrate import devices_file
    local = devices_file()   # PARSIM_DEVICES_LOCAL, else the calibration home's devices.yaml
    if local is not None:   # a user file (written by `parsim calibrate`): the safe reader
        from parsim.fileio import read_user_file
        extra = read_user_file(local, "devices", "yaml") or {}
        if not isinstance(extra, dict):
            raise ParsimError(f"device catalog {local}: expected a mapping of device profiles, got {type(extra).__name__}")
        raw.update(extra)
    _ORIGIN.clear()
    _ORIGIN.update({k: str(local) for k in (extra if local is not None else {})})
    return raw


_ORIGIN: dict = {}   # device name -> the measured file it came from (filled by _catalog)


def profile_file(name: str) -> str:
    """The file device profile `name` was read from: the measured file merged over the catalog (see
    ``parsim.calibrate.devices_file``) or the shipped catalog. ParsimError for an unknown name."""
    cat = _catalog()
    if name not in cat:
        raise ParsimError(f"unknown device {name!r}: expected one of {', '.join(sorted(cat))}{closest(name, cat)}")
    return _ORIGIN.get(name) or str(DATA / "devices.yaml")


def is_measured(name: str) -> bool:
    """Whether device profile `name` comes from a measured file (``parsim calibrate``'s output) rather
    than the shipped catalog (see ``profile_file``). ParsimError for an unknown name."""
    return profile_file(name) != str(DATA / "devices.yaml")


def device_names() -> list[str]:
    return sorted(_catalog())


def get_device(name: str) -> DeviceProfile:
    if isinstance(name, DeviceProfile):
        return name
    cat = _catalog()
    if name not in cat:
        raise ParsimError(f"unknown device {name!r}: expected one of {', '.join(sorted(cat))}{closest(name, cat)}")
    return _profile(name, cat[name])
