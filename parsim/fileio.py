"""The one safe reader for every file a user hands parsim (model files, Hugging Face config.json,
cluster YAML and GraphML, the local device catalog).

``read_user_file(path, kind)`` opens without blocking (a FIFO with no writer cannot hang it),
refuses anything but a regular file, reads at most the kind's size limit (``/dev/zero`` cannot
fill the memory), and parses:

  * YAML with a SafeLoader subclass that refuses aliases (``*name``: no billion laughs, no
    expansion when a string is used), duplicate keys, and nesting deeper than
    ``parsim.limits.MAX_NESTING`` (checked while composing, before Python's recursion limit);
  * JSON refusing duplicate keys and the same nesting depth;
  * GraphML (returned as text) refusing DOCTYPE/ENTITY declarations (XML entity bombs);

Every failure is one-line ``ParsimError`` naming the file and what was expected.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import yaml

from parsim import limits
from parsim.errors import ParsimError

# kind -> (what it is called in messages, size limit name in parsim.limits)
KINDS = {
    "model": ("model file", "MAX_MODEL_FILE_BYTES"),
    "cluster": ("cluster file", "MAX_CLUSTER_FILE_BYTES"),
    "devices": ("device catalog", "MAX_MODEL_FILE_BYTES"),
    "study": ("study file", "MAX_MODEL_FILE_BYTES"),
    "report": ("report input", "MAX_REPORT_INPUT_BYTES"),
    "results": ("results store", "MAX_RESULTS_BYTES"),
}


def exists(spec) -> bool:
    """Whether something is at path `spec` (False for names the OS refuses, e.g. too long)."""
    try:
        os.stat(str(spec))
    except (OSError, ValueError):   # ENOENT, ENAMETOOLONG, ENOTDIR, ELOOP; ValueError: NUL byte
        return False
    return True


def read_bytes(path, kind: str) -> bytes:
    """The bytes of a regular file, at most the kind's size limit; ParsimError otherwise."""
    what, limit_name = KINDS[kind]
    limit = getattr(limits, limit_name)
    p = limits.shown(str(path), 160)
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:
        reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
        raise ParsimError(f"cannot read {what} {p}: {reason}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind_name = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                         else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                         else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise ParsimError(f"cannot read {what} {p}: it is {kind_name}; expected a regular file")
        if st.st_size > limit:
            raise ParsimError(f"{what} {p} is {st.st_size} bytes, above the limit of {limit} "
                              f"(parsim.limits.{limit_name})")
        chunks, n = [], 0
        while True:
            try:
                b = os.read(fd, min(1 << 20, limit + 1 - n))
            except BlockingIOError:   # pragma: no cover - regular files do not block
                break
            if not b:
                break
            chunks.append(b)
            n += len(b)
            if n > limit:   # the file grew while we read it
                raise ParsimError(f"{what} {p} is larger than the limit of {limit} bytes (parsim.limits.{limit_name})")
        return b"".join(chunks)
    except OSError as e:
        raise ParsimError(f"cannot read {what} {p}: {os.strerror(e.errno) if e.errno else e}") from None
    finally:
        os.close(fd)


def read_text(path, kind: str) -> str:
    what, _ = KINDS[kind]
    data = read_bytes(path, kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParsimError(f"cannot read {what} {limits.shown(str(path), 160)}: not UTF-8 text "
                          f"(byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def read_user_file(path, kind: str, fmt: str | None = None):
    """Parsed content of a user file: ``fmt`` json, yaml or graphml (default: by the suffix;
    .json is JSON, .graphml is GraphML text, anything else YAML). See the module docstring."""
    what, _ = KINDS[kind]
    suffix = Path(str(path)).suffix.lower()
    fmt = fmt or {".json": "json", ".graphml": "graphml"}.get(suffix, "yaml")
    text = read_text(path, kind)
    where = f"{what} {limits.shown(str(path), 160)}"
    if fmt == "graphml":
        head = text[:4096].lower()
        if "<!doctype" in head or "<!entity" in text.lower():
            raise ParsimError(f"{where}: DOCTYPE/ENTITY declarations are refused (GraphML needs none)")
        return text
    if fmt == "json":
        return parse_json(text, where)
    return parse_yaml(text, where)


# ---------------------------------------------------------------- JSON

def _no_duplicates(where):
    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise ParsimError(f"{where}: duplicate key {limits.shown(k)}; each key may appear once")
            d[k] = v
        return d
    return hook


def parse_json(text: str, where: str):
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates(where))
    except RecursionError:
        raise ParsimError(f"{where}: nested deeper than {limits.MAX_NESTING} levels "
                          "(parsim.limits.MAX_NESTING)") from None
    except json.JSONDecodeError as e:
        raise ParsimError(f"cannot read {where}, line {e.lineno} column {e.colno}: not valid JSON: "
                          f"{e.msg[:1].lower()}{e.msg[1:]}") from None
    except ValueError as e:   # e.g. an integer of more than 4,300 digits
        raise ParsimError(f"cannot read {where}: not valid JSON: {str(e).splitlines()[0]}") from None
    _check_depth(obj, where)
    return obj


def _check_depth(obj, where):
    """Nesting of lists/dicts (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limits.MAX_NESTING:
                raise ParsimError(f"{where}: nested deeper than {limits.MAX_NESTING} levels "
                                  "(parsim.limits.MAX_NESTING)")
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))


# ---------------------------------------------------------------- YAML

class _Refused(Exception):
    pass


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases, duplicate keys and deep nesting (see module docstring)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()
            raise _Refused(f"YAML alias *{str(ev.anchor)[:30]} at line {ev.start_mark.line + 1}: "
                           "aliases are refused; write the value out")
        self._depth += 1
        if self._depth > limits.MAX_NESTING:
            mark = self.peek_event().start_mark
            raise _Refused(f"nested deeper than {limits.MAX_NESTING} levels at line {mark.line + 1} "
                           "(parsim.limits.MAX_NESTING)")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                except TypeError:
                    raise _Refused(f"unhashable key at line {key_node.start_mark.line + 1}") from None
                if dup:
                    raise _Refused(f"duplicate key {limits.shown(key)} at line {key_node.start_mark.line + 1}; "
                                   "each key may appear once")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YAML_TAG = "tag:yaml.org,2002:"


def yaml_error_line(e) -> str:
    """', line L column C: not valid YAML: <short reason>' for a PyYAML error: the problem and where it is
    (1-based), the construct it interrupted in brackets; no parser internals (source name, the echoed line
    with its caret, Python reprs). For ``f"cannot read {where}{yaml_error_line(e)}"``."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    at = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    problem = str(getattr(e, "problem", None) or "").strip()
    if not problem:       # not a MarkedYAMLError: its text, on one line
        problem = " ".join(str(e).split())[:200]
    ctx, cmark = str(getattr(e, "context", None) or "").strip(), getattr(e, "context_mark", None)
    tag = re.match(r"could not determine a constructor for the tag '([^']*)'", problem)
    if tag:
        problem = f"tag {tag.group(1).replace(_YAML_TAG, '!!')} is not allowed (plain YAML values only)"
    elif "'\\t'" in problem or "'\t'" in problem:
        problem, ctx = "a tab character cannot start a token (indent with spaces)", ""
    elif problem.startswith("but found another document"):
        problem, ctx = "a second document ('---'): expected one document per file", ""
    problem = problem.replace("'<stream end>'", "the end of the file").replace("end of stream", "end of the file")
    if ctx and cmark is not None and cmark is not mark:
        ctx += f" that starts at line {cmark.line + 1} column {cmark.column + 1}"
    return f"{at}: not valid YAML: {problem}" + (f" ({ctx})" if ctx else "")


def parse_yaml(text: str, where: str):
    loader = SafeLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise ParsimError(f"{where}: {e}") from None
    except RecursionError:   # pragma: no cover - the depth cap comes first
        raise ParsimError(f"{where}: nested too deeply (parsim.limits.MAX_NESTING)") from None
    except yaml.YAMLError as e:
        raise ParsimError(f"cannot read {where}{yaml_error_line(e)}") from None
    except ValueError as e:   # e.g. an integer of more than 4,300 digits
        raise ParsimError(f"cannot read {where}: not valid YAML: {str(e).splitlines()[0][:200]}") from None
    finally:
        loader.dispose()

