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
    from parsim.hardware import device_names, profile_file
    return [(n, profile_file(n)) for n in device_names()]


def run(a) -> int:
    from parsim.tables import text_table
    where = {"models": "parsim/data/models.yaml; --model also takes a ModelSpec YAML/JSON or a Hugging Face config.json",
             "clusters": "parsim/data/clusters.yaml; --cluster also takes a cluster YAML or GraphML file",
             "devices": "device profiles a cluster names (the file each is read from)"}
    out = []
    for kind in ([a.kind] if a.kind else KINDS):
        out.append(text_table(["name", "what"], rows(kind), f"{kind} ({where[kind]})"))
    sys.stdout.write("\n".join(out))
    return 0
