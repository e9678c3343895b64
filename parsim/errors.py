"""The user-facing error tier.

``ParsimError`` is raised for anything a user can cause (bad input, a plan that
cannot be built); its message is one line naming the value and what was expected.
The CLI prints it without a traceback and exits 2. Internal invariants use assert.
"""


class ParsimError(Exception):
    """Bad input or an infeasible request; the message is shown to the user as is."""


def require(cond: bool, message: str) -> None:
    """Raise ParsimError(message) unless cond holds."""
    if not cond:
        raise ParsimError(message)


def closest(name: str, choices, n: int = 3) -> str:
    """'; did you mean a, b?' suffix for an unknown name, or '' when nothing is close."""
    import difflib
    hits = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.4)
    return f"; did you mean {', '.join(hits)}?" if hits else ""


def unknown_preset(what: str, spec, presets, listing: str) -> str:
    """One line for a `what` ("model", "cluster") that is neither a preset nor an existing file.

    A spec that reads as a path (a directory separator, a leading '.' or '~', a file suffix) is a
    missing file: the message says so. Anything else is a mistyped preset: the closest preset names
    (parsim.errors.closest), never the whole list; `listing` is the command that lists the presets
    (e.g. "parsim presets models")."""
    import os
    from parsim.limits import shown
    s = str(spec)
    suffix = os.path.splitext(s)[1].lower()
    if "/" in s or os.sep in s or s.startswith((".", "~")) or suffix in (".yaml", ".yml", ".json", ".graphml"):
        return (f"{what} file {shown(s)} does not exist (a {what} is a preset name or an existing file; "
                f"`{listing}` lists the presets)")
    hint = closest(s[:100], presets) or " and no file of that name"
    return f"unknown {what} preset {shown(s)}{hint} (`{listing}` lists the presets)"


def run_main(main, prog: str) -> int:
    """Run a script's ``main()`` as the CLI runs a command: a ParsimError becomes one line on stderr
    ("<prog>: error: ...") and exit code 2, Ctrl-C one line and 130, a closed pipe 0, a missing torch one line naming the install and 2; anything else is a bug and keeps
    its traceback (the one place for this: parsim.cli runs every command through it).
    For ``if __name__ == "__main__": raise SystemExit(run_main(main, "python -m studies.x"))``."""
    import sys
    try:
        return int(main() or 0)
    except ParsimError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:       # the reader went away (| head): not an error of ours
        return 0
    except ModuleNotFoundError as e:
        # the analytical core needs no torch; what runs or checks plans on the torch backend does
        if (e.name or "").split(".")[0] != "torch":
            raise
        print(f"{prog}: error: this needs torch (the torch.distributed backend), which is not installed: "
              f"pip install -e '.[torch]' (it pins torch==2.13.0, the CPU build here)", file=sys.stderr)
        return 2
