"""`parsim presets [models|clusters|devices]`: the names `--model`, `--cluster` and cluster files accept."""
from __future__ import annotations

import sys

KINDS = ("models", "clusters", "devices")


def add_arguments(p):
    p.add_argument("kind", nargs="?", choices=KINDS, default=None, help="only this kind (default: all three)")


def rows(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) of every preset of `kind`, in catalog order."""
    if kind == "models":
        from parsim.model import load_model, preset_names
        return [(n, load_model(n).summary().partition(": ")[2]) for n in preset_names()]
    if kind == "clusters":
        from parsim.topology import _presets
        return [(n, f"{d.get('builder', '?')} of {d.get('device', '?')}" + (f"; {d['source']}" if d.get("source") else ""))
                for n, d in _presets().items()]
    from parsim.hardware import device_names, get_device, is_measured, profile_file
    from parsim.plan import FP8_DTYPES

    def what(n):
        d = get_device(n)
        from parsim.hardware import default_dtype
        kind = default_dtype(d)              # the dtype a plan on it trains in by default (fp32 on CPUs)
        peak = d.peak_flops.get(kind, 0.0)
        fp8 = "".join(f", {k} {d.peak_flops[k] / 1e12:,.0f}" for k in FP8_DTYPES if d.peak_flops.get(k))
        where = "measured here: " + profile_file(n) if is_measured(n) else "catalog"
        return (f"{d.kind}: {d.memory_bytes / 2 ** 30:,.2f} GiB at {d.memory_bandwidth_Bps / 1e9:,.0f} GB/s, "
                f"{kind} {_tflops(peak)}{fp8} TFLOP/s peak; sustained fraction {d.sustained_fraction:g}"
                + (f" (fp8 {d.sustained_fraction_fp8:g})" if d.sustained_fraction_fp8 else "") + f" [{where}]")
    return [(n, what(n)) for n in device_names()]


def _tflops(flops: float) -> str:
    """TFLOP/s for people: 2,250 on a GPU, 0.05 on a CPU (':,.3g' printed 2.25e+03)."""
    t = flops / 1e12
    return f"{t:,.0f}" if t >= 100 else f"{t:.3g}"


def run(a) -> int:
    from parsim.tables import text_table
    where = {"models": "parsim/data/models.yaml; --model also takes a ModelSpec YAML/JSON or a Hugging Face config.json",
             "clusters": "parsim/data/clusters.yaml; --cluster also takes a cluster YAML or GraphML file",
             "devices": "device profiles a cluster names: parsim/data/devices.yaml, or a profile `parsim calibrate` measured"}
    out = []
    for kind in ([a.kind] if a.kind else KINDS):
        out.append(text_table(["name", "what"], rows(kind), f"{kind} ({where[kind]})"))
    sys.stdout.write("\n".join(out))
    return 0
