"""Units: the one place where text becomes numbers and back.

Inside parsim everything is bytes, seconds, FLOPs and bytes/s. Conversions happen
here only, at the boundary (files, CLI flags, reports).

Decimal vs binary is decided here and nowhere else:
  * sizes: ``KB/MB/GB/TB`` are 1e3.. (SI); ``KiB/MiB/GiB/TiB`` are 2**10..;
    a bare number is bytes.
  * rates: ``Gbps``/``Gbit``/``Gbit/s`` are 1e9 *bits*/s; ``GB/s``/``GBps`` are
    1e9 bytes/s (NCCL and Calculon also use 1e9); ``GiB/s`` is 2**30 bytes/s.
  * times: ``ns``, ``us``, ``ms``, ``s``, ``min``, ``h``; a bare number is seconds.
"""
from __future__ import annotations

import re

from parsim.errors import ParsimError

KB, MB, GB, TB = 1e3, 1e6, 1e9, 1e12
KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40

_SIZE = {"": 1, "b": 1, "kb": KB, "mb": MB, "gb": GB, "tb": TB,
         "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB, "k": KiB, "m": MiB, "g": GiB}
_BITS = {"bps": 1, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
         "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_TIME = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9,
         "min": 60.0, "h": 3600.0}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ/]*)\s*$")


def _split(text, what: str, example: str):
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text), ""
    m = _NUM.match(str(text))
    if not m:
        raise ParsimError(f"cannot read {what} {text!r}: expected a number with a unit, e.g. {example}")
    return float(m.group(1)), m.group(2)


def parse_size(text) -> int:
    """'64MiB' -> 67108864 bytes; '1GB' -> 1e9 bytes; 4096 -> 4096."""
    value, unit = _split(text, "size", "64MiB or 1GB")
    key = unit.lower().removesuffix("ytes").removesuffix("yte")
    if key not in _SIZE:
        raise ParsimError(f"unknown size unit {unit!r} in {text!r}: expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    return int(round(value * _SIZE[key]))


def parse_rate(text) -> float:
    """Bandwidth in bytes/s: '400Gbps' -> 5e10; '25GB/s' -> 2.5e10; '1Gbit' -> 1.25e8."""
    value, unit = _split(text, "rate", "400Gbps or 25GB/s")
    u = unit.lower()
    if u in _BITS or u.removesuffix("/s") in _BITS:
        return value * _BITS[u.removesuffix("/s")] / 8.0
    base = u.removesuffix("/s").removesuffix("ps")
    if base in _SIZE and base != "":
        return value * _SIZE[base]
    if u == "":
        return value
    raise ParsimError(f"unknown rate unit {unit!r} in {text!r}: expected e.g. Gbps, Mbit, GB/s or GiB/s")


def parse_time(text) -> float:
    """Seconds: '2us' -> 2e-6; '0.2ms' -> 2e-4; 3 -> 3.0."""
    value, unit = _split(text, "time", "2us or 0.2ms")
    if unit.lower() not in _TIME and unit not in _TIME:
        raise ParsimError(f"unknown time unit {unit!r} in {text!r}: expected ns, us, ms, s, min or h")
    return value * _TIME.get(unit, _TIME.get(unit.lower()))


def parse_size_range(text) -> list[int]:
    """'1KiB:1GiB' -> powers of two from 1 KiB to 1 GiB; '4KiB,64MiB' -> a list; '16MiB' -> [16 MiB]."""
    s = str(text)
    if ":" in s:
        lo, _, rest = s.partition(":")
        hi, _, factor = rest.partition(":")
        lo_b, hi_b = parse_size(lo), parse_size(hi)
        f = float(factor) if factor else 2.0
        if lo_b <= 0 or hi_b < lo_b or f <= 1:
            raise ParsimError(f"bad size range {text!r}: expected LO:HI[:FACTOR] with 0 < LO <= HI and FACTOR > 1")
        out, x = [], float(lo_b)
        while x <= hi_b * (1 + 1e-9):
            out.append(int(round(x)))
            x *= f
        return out
    return [parse_size(p) for p in s.split(",") if p.strip()]


def fmt_bytes(n: float, binary: bool = True) -> str:
    """67108864 -> '64.0 MiB' (binary) or '67.1 MB' (decimal)."""
    step, units = (1024.0, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]) if binary else (1000.0, ["B", "KB", "MB", "GB", "TB", "PB"])
    x = float(n)
    for u in units:
        if abs(x) < step or u == units[-1]:
            return f"{x:.0f} {u}" if u == "B" else f"{x:.1f} {u}"
        x /= step
    raise AssertionError


def fmt_time(t: float) -> str:
    """Seconds to a readable string: 2e-6 -> '2.00 us'."""
    a = abs(t)
    if a >= 1 or a == 0:
        return f"{t:.3f} s"
    if a >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    if a >= 1e-6:
        return f"{t * 1e6:.2f} us"
    return f"{t * 1e9:.1f} ns"


def fmt_rate(bps: float) -> str:
    """bytes/s -> 'x.x GB/s' (decimal, the NCCL convention)."""
    return f"{bps / GB:.2f} GB/s"
