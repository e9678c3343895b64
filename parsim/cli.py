"""`parsim ...`: the command line.

Each subcommand lives in ``parsim/commands/<name>.py`` with two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only
when their command runs, so `parsim plan` never pays for torch or matplotlib.
A ParsimError anywhere becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys


# name -> one-line help. The module parsim.commands.<name> implements it.
COMMANDS = {
    "predict": "price one plan on a model and cluster (StepReport with its breakdown)",
    "plan": "enumerate and rank every valid plan for a number of GPUs",
    "collective": "price a collective (all-reduce, ...) by algorithm and size on a cluster graph",
    "topology": "summarise or draw a cluster graph",
    "simulate": "play a pipeline schedule in the discrete-event simulator",
    "run": "run a plan for real with torch.distributed and measure it",
    "emulate": "emulated multi-host cluster in network namespaces with shaped links",
    "calibrate": "measure this machine's CPU and loopback collectives; write the cpu profile parsim then uses",
    "validate": "run a study file's points (plans, collectives, device) through the backend; results + report",
    "presets": "list the model, cluster and device presets (the names --model and --cluster accept)",
    "report": "comparison report (Markdown + PNGs, standalone HTML) from study results or predict/plan outputs",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error tier: one line naming the (sub)command, exit 2.

    * unknown arguments are refused by the (sub)command that received them, so the message names
      it (``parsim plan: error: unrecognized arguments: --bogus``), not the top-level ``parsim``;
    * a value that starts with ``-`` and a digit (``-1GiB``, ``-0.5``, ``-1e3``) is a value, never an
      option (argparse alone takes ``-1GiB`` for an unknown option: "expected one argument"), so it
      reaches the option's type, which refuses it naming the value and the range expected;
    * no abbreviated flags (allow_abbrev=False): ``--gpu 64`` is refused, not read as ``--gpus``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)   # --gpu is not --gpus: a typo is an error, not a guess
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")   # no parsim option starts with -<digit>

    def error(self, message):  # argparse's own errors: one line, exit 2
        if message.startswith("the following arguments are required"):
            # argparse reports a missing required flag before unknown ones: say the unknown flag too, with the
            # closest real one (trial 2026-11-30: `plan --gpu 64` said only "required: --gpus")
            from parsim.errors import closest
            known = [o for o in self._option_string_actions if o.startswith("--")]
            unknown = [t.split("=", 1)[0] for t in getattr(self, "_argv", ()) if t.startswith("--")
                       and t.split("=", 1)[0] not in self._option_string_actions]
            if unknown:
                message += f" (unrecognized: {' '.join(unknown)}{closest(unknown[0], known, n=1)})"
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parsim", description="parsim: predict, then measure, LLM training under data, tensor and "
                     "pipeline parallelism. `parsim COMMAND -h` for a command's flags.")
    from parsim import __version__
    parser.add_argument("--version", action="version", version=f"parsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_command=name)
        if name in _requested_or_all():
            _module(name).add_arguments(p)
    return parser


def _requested_or_all():
    # Only the module of the command being run is imported (keeps start-up fast);
    # for --help at top level no module is needed.
    argv = sys.argv[1:]
    for a in argv:
        if a in COMMANDS:
            return {a}
        if not a.startswith("-"):
            break
    return set()


def _module(name):
    return importlib.import_module(f"parsim.commands.{name}")


def main(argv=None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:])
    except SystemExit as e:   # argparse's one-line error (exit 2) or --help (exit 0): a return code
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    from parsim.errors import run_main
    return run_main(lambda: _module(args._command).run(args), f"parsim {args._command}")
