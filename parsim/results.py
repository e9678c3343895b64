"""The results store of `parsim validate`: JSON Lines, one finished point per line.

A point is appended as ONE ``write`` of one line ending in a newline on a file opened with
O_APPEND, then ``fsync``-ed before the next point starts: a line is either whole or it is the
file's last, unterminated line (a kill mid-write). ``read`` ignores such a tail and ``repair``
cuts it off before a resumed study appends, so the point it held runs again — every point ends
up in the file exactly once. pandas reads the store (``frame``).

A record: ``{"study", "id", "kind", "status": ok|failed, "cause", "failure": oom|timeout|
rank crash|error, "point", "measured", "predicted", "summary", "machine", "versions",
"profile", "finished_utc", "wall_s"}``; ``summary`` is the one headline number of the point
(``metric``, ``measured``, ``spread`` [min, max], ``predicted``, ``error`` = (predicted −
measured)/measured) that the reports tabulate.
"""
from __future__ import annotations

import json
import os
import platform
import socket
from pathlib import Path

from parsim.errors import ParsimError


def append(path, record: dict) -> None:
    """Append one record as one line, durably (single write on O_APPEND, then fsync)."""
    line = (json.dumps(record, default=_default, allow_nan=False) + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, line)
        assert n == len(line), f"short write to {path}: {n} of {len(line)} bytes"
        os.fsync(fd)
    finally:
        os.close(fd)


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"{type(o).__name__} is not JSON-able")


def read(path) -> list[dict]:
    """Every whole record of a store, in file order; an unterminated last line (a point cut by a
    kill) is not a record. A malformed line elsewhere is an error naming its number."""
    path = Path(path)
    from parsim.fileio import read_bytes
    data = read_bytes(path, "results")     # a regular file, size capped (parsim.limits.MAX_RESULTS_BYTES)
    lines = data.split(b"\n")
    whole = lines[:-1]            # the part after the last newline is unterminated (or empty)
    out = []
    for i, ln in enumerate(whole, 1):
        if not ln.strip():
            continue
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError as e:
            raise ParsimError(f"{path}, line {i} column {e.colno}: not a JSON record ({e.msg[:1].lower()}{e.msg[1:]}; "
                              "the store is JSON Lines, one point a line)") from None
        except ValueError:     # bytes that are not UTF-8
            raise ParsimError(f"{path}, line {i}: not a JSON record (not UTF-8 text; the store is JSON Lines, "
                              "one point a line)") from None
    return out


def repair(path) -> int:
    """Cut an unterminated last line off the store; returns the bytes removed (0: it was whole)."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    cut = len(data) - keep
    if cut:
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return cut


def latest(records) -> dict:
    """id -> the last record for that id."""
    return {r["id"]: r for r in records}


def frame(records):
    """A pandas DataFrame, one row per point: id, kind, status, failure, metric, measured,
    spread_min, spread_max, predicted, error, plus the point's model/plan label where it has one."""
    import pandas as pd
    rows = []
    for r in records:
        s = r.get("summary") or {}
        sp = s.get("spread") or [None, None]
        rows.append({"study": r.get("study"), "id": r["id"], "kind": r.get("kind"), "status": r.get("status"),
                     "failure": r.get("failure"), "cause": r.get("cause"), "metric": s.get("metric"),
                     "measured": s.get("measured"), "spread_min": sp[0], "spread_max": sp[1],
                     "predicted": s.get("predicted"), "error": s.get("error")})
    return pd.DataFrame(rows)


def classify_failure(message: str) -> str:
    """oom | timeout | rank crash | error, from a failure's one-line cause."""
    m = message.lower()
    # "likely out of memory": a SIGKILL nobody can attribute (backends/torchdist/launch.py) stays a crash
    if ("out of memory" in m and "likely out of memory" not in m) or "outofmemory" in m or "cuda oom" in m:
        return "oom"
    if "timeout" in m or "did not finish" in m or "no progress" in m or "timed out" in m:
        return "timeout"
    if "killed by" in m or "exited with code" in m or "failed in phase" in m or "rank" in m:
        return "rank crash"
    return "error"


def machine_info() -> dict:
    """Host name, OS, CPU count, Python — and torch/CUDA devices when torch is already imported."""
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
    try:
        info["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def versions() -> dict:
    """parsim, numpy, pandas — and torch when importable (without importing it into the core's callers)."""
    import importlib.metadata as md

    import parsim
    out = {"parsim": parsim.__version__}
    for pkg in ("numpy", "pandas", "torch", "networkx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        import subprocess
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            out["git"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out
