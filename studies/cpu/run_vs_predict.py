"""Measured vs predicted on this machine's CPU — now the study file studies/cpu/run_vs_predict.yaml.

    python -m studies.cpu.run_vs_predict [--out reports/cpu] [--resume]

is the same as ``parsim validate studies/cpu/run_vs_predict.yaml --out reports/cpu --fresh`` (results
in reports/cpu/results.jsonl, report in reports/cpu/report.{md,html}); the report is regenerated
from the results by ``parsim report reports/cpu --out reports/cpu``. Run
``python -m parsim.calibrate`` first on a new machine and keep it otherwise idle.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

STUDY = Path(__file__).with_name("run_vs_predict.yaml")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/cpu")
    ap.add_argument("--resume", action="store_true", help="finish an interrupted run instead of starting again")
    a = ap.parse_args(argv)
    from parsim.cli import main as cli
    return cli(["validate", str(STUDY), "--out", a.out, "--resume" if a.resume else "--fresh"])


if __name__ == "__main__":
    sys.exit(main())
