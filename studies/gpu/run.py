"""Single-GPU check of the step model — now the study file studies/gpu/h200.yaml.

    PYTHONPATH=. python3 studies/gpu/run.py [--out-dir DIR]

is ``parsim validate studies/gpu/h200.yaml --out DIR`` (default $OUT, else studies/gpu/results):
it measures the device into a measured profile, trains five plans of a 1.2 B Llama-style model
and writes results.jsonl and the report. Without a GPU it runs the study's CPU dry run (--tiny).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or str(ROOT / "studies/gpu/results"))
    a = ap.parse_args(argv)
    import torch

    from parsim.cli import main as cli
    tiny = [] if torch.cuda.is_available() else ["--tiny"]
    if tiny:
        print("no CUDA device visible: running the study's CPU dry run (--tiny); these are not GPU results",
              file=sys.stderr)
    return cli(["validate", str(ROOT / "studies/gpu/h200.yaml"), "--out", a.out_dir, "--fresh", *tiny])


if __name__ == "__main__":
    from parsim.errors import run_main
    raise SystemExit(run_main(main, "python -m studies.gpu.run"))
