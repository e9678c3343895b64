"""Units: the one place where text becomes numbers and back.

Inside parsim everything is bytes, seconds, FLOPs and bytes/s. Conversions happen
here only, at the boundary (files, CLI flags, reports).

The grammar, decided here and nowhere else (case-sensitive where it matters):
  * a unit is PREFIX + BASE. BASE ``B`` (or ``byte``/``bytes``) is a byte, ``b`` (or
    ``bit``/``bits``) is a bit — the one case-sensitive letter (IEC 80000-13; NCCL
    reports GB/s = 1e9 bytes/s, tc and link vendors Gbit/s).
  * PREFIX ``k``/``K``, ``M``, ``G``, ``T``, ``P`` are decimal (1e3, 1e6, ...; SI);
    ``Ki``, ``Mi``, ``Gi``, ``Ti``, ``Pi`` are binary (2**10, 2**20, ...; IEC). Lower-case
    ``m``/``g``/``t``/``p`` are accepted as the same decimal prefixes (a size or a rate
    never has a milli- prefix).
  * a bare prefix (``64M``, ``1k``) is refused: it is 10^6 to some tools and 2^20 to
    others (nccl-tests), so the message asks for ``64MiB`` or ``64MB``.
  * a binary prefix with a lone ``b`` (``4Gib``, ``4gib``) is refused as a mistyped ``GiB``;
    bits after a binary prefix are spelled out (``4Gibit``). Memory sizes (``parse_memory_size``:
    a headroom) take no bit unit at all (``4gb`` is refused, not read as 4 gigabits).
  * sizes: a bare number is bytes; a size in bits must be a whole number of bytes
    (``1Mb`` = 125000 B).
  * rates: BASE followed by ``/s`` or ``ps`` (``GB/s`` = ``GBps`` = 1e9 bytes/s,
    ``Gb/s`` = ``Gbps`` = 1e9 bits/s = 1.25e8 bytes/s, ``GiB/s`` = 2**30 bytes/s);
    ``bit`` needs no suffix (``1Gbit`` = 1e9 bits/s, tc's spelling); a bare number is
    bytes/s.
  * times: ``ns``, ``us``/``µs``, ``ms``, ``s``, ``min``, ``h``; a bare number is seconds.
Every parser returns a finite, non-negative number or raises a one-line ParsimError
naming the text and what was expected. ``fmt_bytes``/``fmt_rate``/``fmt_time`` print
what these parse back (round trip to the printed precision).
"""
from __future__ import annotations

import math
import re

from parsim.errors import ParsimError

KB, MB, GB, TB = 1e3, 1e6, 1e9, 1e12
KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40

_PREFIX = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "m": 1e6, "G": 1e9, "g": 1e9, "T": 1e12, "t": 1e12,
           "P": 1e15, "p": 1e15,
           "Ki": 2 ** 10, "ki": 2 ** 10, "KI": 2 ** 10, "Mi": 2 ** 20, "MI": 2 ** 20, "mi": 2 ** 20,
           "Gi": 2 ** 30, "GI": 2 ** 30, "gi": 2 ** 30, "Ti": 2 ** 40, "TI": 2 ** 40, "ti": 2 ** 40,
           "Pi": 2 ** 50, "PI": 2 ** 50, "pi": 2 ** 50}
_BASE_BITS = {"B": 8, "byte": 8, "bytes": 8, "Byte": 8, "Bytes": 8, "b": 1, "bit": 1, "bits": 1, "Bit": 1, "Bits": 1}
_TIME = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9,
         "min": 60.0, "h": 3600.0}
_NUM = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ/]*)\s*$")
_UNIT = re.compile(r"^(?P<prefix>[kKmMgGtTpP][iI]?|)(?P<base>[Bb]ytes?|[Bb]its?|B|b|)$")
_SIZE_UNITS = "B, KB, MB, GB, TB (10^3..), KiB, MiB, GiB, TiB (2^10..), or bits: Kb, Mb, Gb"
_RATE_UNITS = "Gbps, Gb/s or Gbit (bits/s), GB/s or GBps (bytes/s), GiB/s"


def _split(text, what: str, example: str):
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = _NUM.match(str(text))
        if not m:
            raise ParsimError(f"cannot read {what} {text!r}: expected a number with a unit, e.g. {example}")
        value, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(value):
        raise ParsimError(f"{what} {text!r} is not a finite number: expected e.g. {example}")
    if value < 0:
        raise ParsimError(f"{what} {text!r} is negative: a {what} must be >= 0, e.g. {example}")
    return value, unit


def _unit(unit: str, text, what: str, units: str):
    """(multiplier, bits per unit of the base) of PREFIX+BASE, or a one-line error."""
    m = _UNIT.match(unit)
    if not m:
        raise ParsimError(f"unknown {what} unit {unit!r} in {text!r}: expected {units}")
    prefix, base = m.group("prefix"), m.group("base")
    if prefix not in _PREFIX:
        raise ParsimError(f"unknown {what} unit {unit!r} in {text!r}: expected {units}")
    if prefix and not base:
        raise ParsimError(f"{what} {text!r} has a bare prefix {prefix!r}: say {prefix.upper()[0]}iB (2^n) or "
                          f"{prefix.upper()[0]}B (10^n) for bytes, {prefix.upper()[0]}b for bits")
    if len(prefix) == 2 and base == "b":
        # a binary prefix with a lone lower-case b (4gib, 4Gib): almost surely GiB mistyped, not gibibits (trial
        # 2026-11-30: --memory-headroom 4gib was read as 0.5 GiB); bits with a binary prefix are spelled out (Gibit)
        raise ParsimError(f"{what} {text!r}: {unit!r} reads as {prefix[0].upper()}ibi*bits* (lower-case b = bits): say "
                          f"{prefix[0].upper()}iB for bytes, or {prefix[0].upper()}ibit for bits")
    return _PREFIX[prefix], _BASE_BITS.get(base, 8)


def _finite(x: float, text, what: str) -> float:
    if not math.isfinite(x):
        raise ParsimError(f"{what} {text!r} is too large: expected a finite number")
    return x


def parse_size(text) -> int:
    """Bytes (int) of a size: '64MiB' -> 67108864; '1GB' -> 10**9; '1Mb' -> 125000 (bits);
    4096 -> 4096. Raises ParsimError for an unknown unit, a bare prefix ('1k'), a value that
    is not finite, negative, or not a whole number of bytes in bits."""
    value, unit = _split(text, "size", "64MiB or 1GB")
    mult, bits = _unit(unit, text, "size", _SIZE_UNITS)
    nbits = _finite(value * mult * bits, text, "size")
    if bits == 1 and abs(nbits / 8 - round(nbits / 8)) > 1e-9 * max(1.0, nbits):
        raise ParsimError(f"size {text!r} is {nbits:g} bits, not a whole number of bytes")
    return int(round(nbits / 8))


def parse_memory_size(text) -> int:
    """Bytes (int) of a memory size (a headroom, a capacity): parse_size without bit units, which no memory is
    measured in (trial 2026-11-30: --memory-headroom 4gb was read as 4 gigabits = 0.47 GiB). Raises ParsimError as
    parse_size does, and for a unit in bits."""
    value, unit = _split(text, "size", "6GiB or 6GB")
    if _unit(unit, text, "size", _SIZE_UNITS)[1] == 1:
        prefix = _UNIT.match(unit).group("prefix")
        prefix = prefix[:1].upper() + prefix[1:].lower()
        raise ParsimError(f"size {text!r} is in bits (lower-case b): a memory size is in bytes, e.g. {value:g}{prefix}B")
    return parse_size(text)


def parse_rate(text) -> float:
    """Bandwidth in bytes/s: '400Gbps' -> 5e10; '25GB/s' -> 2.5e10; '25GBps' -> 2.5e10;
    '1Gbit' -> 1.25e8; '1GiB/s' -> 2**30. Raises ParsimError as parse_size does."""
    value, unit = _split(text, "rate", "400Gbps or 25GB/s")
    u = unit
    if u.endswith("/s"):
        u = u[:-2]
    elif u.endswith("ps") and u not in ("ps",):
        u = u[:-2]
    elif u and not re.search(r"[Bb]its?$", u):
        raise ParsimError(f"rate {text!r}: unit {unit!r} is not per second: expected {_RATE_UNITS}")
    if unit and not u:
        raise ParsimError(f"unknown rate unit {unit!r} in {text!r}: expected {_RATE_UNITS}")
    mult, bits = _unit(u, text, "rate", _RATE_UNITS)
    return _finite(value * mult * bits / 8.0, text, "rate")


def parse_time(text) -> float:
    """Seconds: '2us' -> 2e-6; '0.2ms' -> 2e-4; 3 -> 3.0."""
    value, unit = _split(text, "time", "2us or 0.2ms")
    if unit not in _TIME and unit.lower() not in _TIME:
        raise ParsimError(f"unknown time unit {unit!r} in {text!r}: expected ns, us, ms, s, min or h")
    return _finite(value * _TIME.get(unit, _TIME.get(unit.lower())), text, "time")


MAX_RANGE_POINTS = 4096


def parse_size_range(text) -> list[int]:
    """'1KiB:1GiB' -> powers of two from 1 KiB to 1 GiB; '1KiB:1GiB:4' -> factors of 4;
    '4KiB,64MiB' -> a list; '16MiB' -> [16 MiB]. Never empty; raises ParsimError otherwise."""
    s = str(text)
    if ":" in s:
        lo, _, rest = s.partition(":")
        hi, _, factor = rest.partition(":")
        lo_b, hi_b = parse_size(lo), parse_size(hi)
        try:
            f = float(factor) if factor.strip() else 2.0
        except ValueError:
            f = float("nan")
        if not (math.isfinite(f) and f > 1) or lo_b <= 0 or hi_b < lo_b:
            raise ParsimError(f"bad size range {text!r}: expected LO:HI[:FACTOR] with 0 < LO <= HI and a finite "
                              "FACTOR > 1")
        n = math.floor(math.log(hi_b / lo_b) / math.log(f) + 1e-9) + 1
        if n > MAX_RANGE_POINTS:
            raise ParsimError(f"size range {text!r} has {n} points: expected at most {MAX_RANGE_POINTS} "
                              "(use a larger FACTOR)")
        out, x = [], float(lo_b)
        while x <= hi_b * (1 + 1e-9):
            out.append(int(round(x)))
            x *= f
        return out
    out = [parse_size(p) for p in s.split(",") if p.strip()]
    if not out:
        raise ParsimError(f"no size in {text!r}: expected e.g. 16MiB, 4KiB,64MiB or 1KiB:1GiB")
    return out


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
