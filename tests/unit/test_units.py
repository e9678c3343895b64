"""Units grammar (parsim/units.py): b = bit, B = byte, decided case-sensitively; k/M/G decimal,
Ki/Mi/Gi binary; bare prefixes refused; every parser returns finite numbers or one-line errors."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsim.errors import ParsimError
from parsim.units import fmt_bytes, fmt_rate, fmt_time, parse_rate, parse_size, parse_size_range, parse_time


@pytest.mark.parametrize("text, bytes_per_s", [
    ("25GBps", 25e9),          # issue 12 §5: was 3.125e9 (lower-cased, read as bits): B = byte
    ("25GB/s", 25e9),
    ("25Gbps", 25e9 / 8),      # b = bit: 25e9 bits/s = 3.125e9 bytes/s
    ("25Gb/s", 25e9 / 8),
    ("1Gbit", 1e9 / 8),        # tc's spelling
    ("200Mbit/s", 200e6 / 8),
    ("1GiB/s", 2 ** 30),
    ("1Gibit/s", 2 ** 30 / 8),   # gibibits spelled out; "1Gib/s" is refused (a binary prefix and a lone b)
    ("100kbps", 1e5 / 8),
    ("100KBps", 1e5),
    ("5", 5.0),                # bare number: bytes/s
])
def test_rate_bits_and_bytes_case_sensitive(text, bytes_per_s):
    assert parse_rate(text) == pytest.approx(bytes_per_s)


@pytest.mark.parametrize("text, nbytes", [
    ("1Mb", 125_000),          # issue 12 §5: was 1e6; 1 Mb = 1e6 bits = 125000 bytes
    ("1MB", 10 ** 6),
    ("1kB", 1000), ("1KB", 1000),   # k and K: both the SI kilo
    ("1KiB", 1024), ("1Kibit", 128),  # bits after a binary prefix are spelled out: 1 Kibit = 128 bytes
    ("64MiB", 64 * 2 ** 20), ("64.0 MiB", 64 * 2 ** 20),
    ("3 bytes", 3), ("16 bits", 2), ("4096", 4096),
])
def test_size_grammar(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", [
    "1k", "64M", "1G",         # bare prefixes: 10^n to some tools, 2^n to nccl-tests -> refused
    "1e400", "1e400GiB",       # overflow to inf: never returned
    "", "   ", "abc", "-1MiB", "1b",   # 1 bit is not a whole byte
    "1 parsec", "1 MiBps",
    "1kib", "4gib", "4Gib",    # a binary prefix with a lone b: GiB mistyped, not gibibits (trial 2026-11-30)
])
def test_size_refused_one_line(text):
    with pytest.raises(ParsimError) as e:
        parse_size(text)
    assert "\n" not in str(e.value) and repr(text) in str(e.value)


@pytest.mark.parametrize("text", [",,,", "", "1KiB:1GiB:nan", "1KiB:1GiB:inf", "1KiB:1GiB:1", "1GiB:1KiB",
                                  "1KiB:1GiB:x", "1e400:1e401", "1B:1TiB:1.000001"])
def test_size_range_refused_one_line(text):
    with pytest.raises(ParsimError) as e:
        parse_size_range(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["1e400Gbps", "25GB", "1G", "nan", "inf", "1 ps", "-5Gbps"])
def test_rate_refused_one_line(text):
    with pytest.raises(ParsimError) as e:
        parse_rate(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["1e400", "1e400ms", "", "3 fortnights"])
def test_time_refused_one_line(text):
    with pytest.raises(ParsimError):
        parse_time(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_numbers_not_finite_refused(value):
    for f in (parse_size, parse_rate, parse_time):
        with pytest.raises(ParsimError):
            f(value)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2 ** 60), st.booleans())
def test_fmt_bytes_round_trips(n, binary):
    # fmt_bytes prints one decimal of its unit: parse(fmt(n)) is within 0.05 of that unit of n
    text = fmt_bytes(n, binary)
    unit = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40, "PiB": 2 ** 50,
            "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15}[text.split()[1]]
    assert abs(parse_size(text) - n) <= 0.05 * unit + 0.5


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e3, max_value=1e15, allow_nan=False))
def test_fmt_rate_round_trips(bps):
    # 'x.xx GB/s': two decimals of 1e9 B/s
    assert abs(parse_rate(fmt_rate(bps)) - bps) <= 0.005e9 + 1e-6


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-10, max_value=1e6, allow_nan=False))
def test_fmt_time_round_trips(t):
    # three significant-ish digits: 2 decimals of ms/us, 1 of ns, 3 of s
    back = parse_time(fmt_time(t))
    assert math.isfinite(back) and abs(back - t) <= max(0.0051 * t, 0.05e-9 + 1e-18, 0.0005 if t >= 1 else 0)


@pytest.mark.parametrize("text", ["4gb", "4Gb", "4Gbit", "4Gibit", "32 bits"])
def test_memory_sizes_are_never_in_bits(text):
    # trial 2026-11-30: --memory-headroom 4gb was 4 gigabits = 0.47 GiB, silently; memory is counted in bytes
    from parsim.units import parse_memory_size
    with pytest.raises(ParsimError) as e:
        parse_memory_size(text)
    assert "is in bits" in str(e.value) and "\n" not in str(e.value)


def test_memory_sizes_in_bytes_read_as_sizes():
    from parsim.units import parse_memory_size
    assert [parse_memory_size(t) for t in ("4GiB", "4GB", "0", "512 MiB")] == [4 * 2 ** 30, 4 * 10 ** 9, 0, 512 * 2 ** 20]
