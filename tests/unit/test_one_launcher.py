"""One way to start ranks, one direction of imports (issue 14, checks).

* Every process of backends/, parsim/ and studies/ is started by backends/torchdist/launch.py (ranks
  with their watchdog, a failed rank named in one line, PR_SET_PDEATHSIG so none outlives its launcher):
  a second hand-written launcher (``subprocess.Popen``, torch's ``start_processes`` / ``mp.spawn``,
  ``multiprocessing``, ``os.fork``) anywhere else fails here.
* The core (parsim/) imports no ``backends`` outside its CLI command modules (parsim/commands/), and
  never torch: the measuring is the backend's, the fitting the core's.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "backends" / "torchdist" / "launch.py"
TREES = ("backends", "parsim", "studies")
# process creation, however spelled: Popen, torch's elastic/multiprocessing launchers, fork/spawn
FORBIDDEN = re.compile(r"\bPopen\b|\bstart_processes\b|\bmultiprocessing\b|\bmp\.spawn\b|\bos\.fork\b|"
                       r"\bos\.spawn\w*\b|\bos\.posix_spawn\w*\b|\bpty\.fork\b|\bos\.exec\w+\b")


def _code_lines(path: Path):
    """(line number, code) of a Python file with comments and string literals blanked (AST-exact
    positions), so documentation that names Popen is not a launcher."""
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and hasattr(node, "end_lineno"):
            for ln in range(node.lineno, node.end_lineno + 1):
                line = lines[ln - 1]
                a = node.col_offset if ln == node.lineno else 0
                b = node.end_col_offset if ln == node.end_lineno else len(line)
                lines[ln - 1] = line[:a] + " " * (b - a) + line[b:]
    for i, line in enumerate(lines, 1):
        yield i, line.split("#", 1)[0]


def _python_files():
    for t in TREES:
        yield from sorted((ROOT / t).rglob("*.py"))


def test_no_process_is_started_outside_the_one_launcher():
    bad = []
    for f in _python_files():
        if f == LAUNCHER:
            continue
        for i, code in _code_lines(f):
            m = FORBIDDEN.search(code)
            if m:
                bad.append(f"{f.relative_to(ROOT)}:{i}: {m.group(0)}")
    assert not bad, "processes started outside backends/torchdist/launch.py:\n" + "\n".join(bad)


def test_the_launcher_is_where_popen_lives():
    """The check above is not vacuous: the launcher itself matches the pattern."""
    assert any(FORBIDDEN.search(code) for _, code in _code_lines(LAUNCHER))


def test_the_check_catches_a_second_launcher(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('import subprocess\n"""Popen in a docstring is fine"""  # so is Popen here\n'
                 "p = subprocess.Popen(['true'])\nfrom torch.distributed.elastic.multiprocessing import start_processes\n")
    hits = [i for i, code in _code_lines(f) if FORBIDDEN.search(code)]
    assert hits == [3, 4]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield str(node.args[0].value)


def test_the_core_imports_no_backends_outside_its_cli_commands():
    bad = []
    for f in sorted((ROOT / "parsim").rglob("*.py")):
        if "commands" in f.relative_to(ROOT / "parsim").parts:
            continue
        for mod in _imports(f):
            top = mod.split(".")[0]
            if top in ("backends", "torch"):
                bad.append(f"{f.relative_to(ROOT)}: imports {mod}")
    assert not bad, "\n".join(bad)


def test_calibration_measures_in_the_backend_and_fits_in_the_core():
    """The torch measurements live in backends/torchdist/calibrate.py; parsim/calibrate.py has no torch
    script embedded in a string and starts no process."""
    core = (ROOT / "parsim" / "calibrate.py").read_text()
    assert "import torch" not in core and "subprocess" not in core
    backend = [m for m in _imports(ROOT / "backends" / "torchdist" / "calibrate.py")]
    assert "backends.torchdist.launch" in backend
