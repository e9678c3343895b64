"""The one writer of every output file parsim makes (`--out`, `--plot`, `--draw`, `--trace`,
`--gantt`, `topology save`, study results, calibration profiles).

Two calls:

* :func:`check_output_path` — before any long work: the directory exists and is writable
  (a real temp file is created in it and removed), the target is absent or a regular file
  (never a directory, device node, FIFO or symlink: as root, replacing ``/dev/null`` with a
  regular file would break the machine), and the suffix is one the writer knows.
  Missing parent directories are *not* created: a typo'd directory is an error naming it.
* :func:`write_atomic` — writes through a securely created temp file in the target's
  directory (``tempfile.mkstemp``: unpredictable name, O_EXCL, mode 0600 until done), fsyncs
  it, then ``os.replace``s it onto the target and fsyncs the directory. A crash or kill -9 at
  any point leaves either the previous file or the new one, never a half-written one.

Every failure is a one-line :class:`~parsim.errors.ParsimError` naming the path.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Union

from parsim.errors import ParsimError

# Suffixes by kind of output; a writer states which it accepts.
JSON = (".json",)
FIGURE = (".png", ".svg", ".pdf")        # what matplotlib's Agg/svg/pdf backends write without extras
CLUSTER = (".yaml", ".yml", ".graphml")
TEXT = (".txt", ".csv", ".json", ".md", "")

Data = Union[str, bytes, Callable[[BinaryIO], None]]


def _what(what: str | None, path) -> str:
    shown = str(path) if len(str(path)) <= 160 else str(path)[:150] + "..."
    return f"{what} {shown}" if what else shown


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_output_path(path, suffixes: Iterable[str] | None = None, what: str | None = None) -> Path:
    """Check that `path` can be written atomically; returns it as a Path.

    suffixes: accepted suffixes (lower case, with the dot; ``""`` = no suffix), or None for any.
    what: the flag or role named in errors (e.g. ``"--plot"``).
    Raises ParsimError (one line, naming the path) when the suffix is unknown, the target is a
    directory, a symlink or any other non-regular file, the directory is missing, is not a
    directory, or cannot take a new file (read-only file system, permissions, name too long).
    """
    label = _what(what, path)
    if path is None or not str(path).strip():
        raise ParsimError(f"{what or 'output path'} is empty: expected a file name")
    p = Path(os.path.expanduser(str(path)))
    if len(p.name.encode()) > 255:
        raise ParsimError(f"cannot write {label}: the file name is {len(p.name.encode())} bytes; at most 255")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ParsimError(f"cannot write {label}: {_why(e)}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ParsimError(f"cannot write {label}: it is a directory; expected a file name")
        if stat.S_ISLNK(st.st_mode):
            raise ParsimError(f"cannot write {label}: it is a symbolic link (parsim replaces only regular files); "
                              "give the link's target or another name")
        if not stat.S_ISREG(st.st_mode):
            raise ParsimError(f"cannot write {label}: it exists and is not a regular file (device, FIFO or socket); "
                              "expected a new or regular file")
    if suffixes is not None:
        allowed = tuple(suffixes)
        if p.suffix.lower() not in allowed:
            shown = ", ".join(s or "(none)" for s in allowed)
            raise ParsimError(f"{label}: unknown file type {p.suffix or '(no suffix)'!r}: expected one of {shown}")
    parent = p.parent
    if not parent.exists():
        raise ParsimError(f"cannot write {label}: directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise ParsimError(f"cannot write {label}: {str(parent)!r} is not a directory")
    _probe(parent, f".{p.name[:64]}.", f"cannot write {label}")   # the file's own name length counts too
    return p


def _probe(directory: Path, prefix: str, failure: str) -> None:
    """The real test of a target directory: create and remove a file in it (read-only file system,
    permissions, name length); ParsimError starting with `failure` otherwise."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ParsimError(f"{failure}: {_why(e)} (in directory {str(directory)!r})") from None


def check_output_dir(path, what: str | None = None) -> Path:
    """Check a directory output (one file per rank goes in it): it exists and takes new files,
    or it does not exist yet and its parent does (only the directory itself is created, by
    :func:`make_output_dir`). Raises ParsimError naming the path otherwise."""
    label = _what(what, path)
    if path is None or not str(path).strip():
        raise ParsimError(f"{what or 'output directory'} is empty: expected a directory name")
    p = Path(os.path.expanduser(str(path)))
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise ParsimError(f"cannot write into {label}: it exists and is not a directory")
    probe_in = p if p.exists() else p.parent
    if not probe_in.is_dir():
        raise ParsimError(f"cannot write into {label}: directory {str(probe_in)!r} does not exist")
    _probe(probe_in, ".parsim-", f"cannot write into {label}")
    return p


def make_output_dir(path, what: str | None = None) -> Path:
    """:func:`check_output_dir`, then create the directory itself (never its parents)."""
    p = check_output_dir(path, what)
    try:
        p.mkdir(exist_ok=True)
    except OSError as e:
        raise ParsimError(f"cannot create {_what(what, path)}: {_why(e)}") from None
    return p


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


@contextlib.contextmanager
def atomic_path(path, suffixes: Iterable[str] | None = None, what: str | None = None):
    """Context manager yielding a temp file name in `path`'s directory to write to by name
    (for writers that only take a path, e.g. torch.profiler's export_chrome_trace); on a
    clean exit it is fsynced and renamed onto `path`; on an exception it is removed."""
    p = check_output_path(path, suffixes, what)
    label = _what(what, path)
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name[:64]}.", suffix=".tmp")
    except OSError as e:
        raise ParsimError(f"cannot write {label}: {_why(e)}") from None
    os.close(fd)
    done = False
    try:
        yield tmp
        try:
            mode = stat.S_IMODE(os.stat(p).st_mode) if p.exists() else 0o666 & ~_umask()
            with open(tmp, "rb+") as f:
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, p)
            done = True
            _fsync_dir(p.parent)
        except OSError as e:
            raise ParsimError(f"cannot write {label}: {_why(e)}") from None
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_atomic(path, data: Data, suffixes: Iterable[str] | None = None, what: str | None = None) -> Path:
    """Write `data` (str as UTF-8, bytes, or a callable given a binary file object) to `path`
    atomically (temp file in the same directory + fsync + rename). Returns the Path.

    Raises ParsimError naming the path when it fails :func:`check_output_path` or the write
    fails (disk full, I/O error); the previous file, if any, is then left as it was.
    """
    label = _what(what, path)
    with atomic_path(path, suffixes, what) as tmp:
        try:
            with open(tmp, "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data.encode() if isinstance(data, str) else bytes(data))
        except OSError as e:
            raise ParsimError(f"cannot write {label}: {_why(e)}") from None
    return Path(os.path.expanduser(str(path)))


def save_figure(fig, path, what: str | None = None, **savefig_kw) -> Path:
    """matplotlib ``fig.savefig`` through :func:`write_atomic`; the format is the suffix's."""
    p = check_output_path(path, FIGURE, what)
    fmt = p.suffix.lower()[1:]
    return write_atomic(p, lambda f: fig.savefig(f, format=fmt, **savefig_kw), FIGURE, what)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:   # some file systems cannot fsync a directory; the rename is done either way
        pass
    finally:
        os.close(fd)
